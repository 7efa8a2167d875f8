"""Would test-time augmentation help? Validation figures with and without it.

    python -m model.tta_check --model model/weights/lenet_lld.keras --data DIR

Scores the model's validation split as the workers do, then averaged over the horizontal flip
(2 views) and over both flips (4 views), and prints for each the ROC AUC and the specificity
at the operating-point rule (highest specificity with sensitivity >= 0.99), the threshold
chosen on the same validation images for all three, so only the views differ. Validation
only: the test split is not used to decide. A view costs one more network pass per image.
"""

from __future__ import annotations

import argparse

import numpy as np

from model import metrics as mm
from model.evaluate import add_split_script_arguments, load_split


def run(args: argparse.Namespace) -> int:
    from model.inference import load_model

    val, _ = load_split(args, "val")
    x, y = val.images, val.labels
    model = load_model(args.model, batch_size=32)
    p = {
        "identity": model.score(x),
        "hflip": model.score(np.ascontiguousarray(x[:, :, ::-1])),
        "vflip": model.score(np.ascontiguousarray(x[:, ::-1])),
        "hvflip": model.score(np.ascontiguousarray(x[:, ::-1, ::-1])),
    }
    candidates = {
        "one view": p["identity"],
        "2 views (h flip)": (p["identity"] + p["hflip"]) / 2,
        "4 views (h, v flips)": np.mean(list(p.values()), axis=0),
    }
    print(f"{args.model.name}: validation, {len(y)} images ({int(y.sum())} positive)")
    for name, scores in candidates.items():
        threshold = mm.choose_threshold(y, scores, args.target_sensitivity)
        m = mm.binary_metrics(y, scores, threshold)
        print(
            f"  {name:22s} AUC {m['auc']:.4f}  sensitivity {m['sensitivity']:.4f}  "
            f"specificity {m['specificity']:.4f}  (threshold {threshold:.3f})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.tta_check", description=__doc__)
    add_split_script_arguments(parser)
    parser.add_argument("--target-sensitivity", type=float, default=0.99)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
