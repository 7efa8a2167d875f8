"""The model card's heatmap figure: a few test-split images the model sends to a person,
each beside its Grad-CAM overlay (``model.explain``), as a reviewer sees them.

    python -m model.heatmap_figure --model model/weights/lenet_lld.keras \
        --data ../shared/data/taleqani-all --out docs/model-card/lenet_lld-heatmaps.png

Images are chosen from the model's test split without looking at their maps: the flagged
images of each subtype with the median p_leukemia among that subtype's flagged images, and
every benign image the model flags (false positives, at most two), so the figure shows a
typical case per class and the errors rather than the prettiest maps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model.card import SUBTYPE_LABELS, SUBTYPES, read_card
from model.evaluate import add_split_script_arguments, load_split
from model.explain import colorize


def choose(labels: list[str], p: np.ndarray, threshold: float, per_class: int) -> list[int]:
    """Indices to show: per subtype the ``per_class`` flagged images nearest the median
    p_leukemia, then up to two flagged benign images."""
    chosen: list[int] = []
    for name in SUBTYPES:
        idx = [i for i, lab in enumerate(labels) if lab == name and p[i] >= threshold]
        if not idx:
            continue
        median = float(np.median(p[idx]))
        idx.sort(key=lambda i: (abs(p[i] - median), i))
        chosen += idx[:per_class]
    chosen += [i for i, lab in enumerate(labels) if lab == "benign" and p[i] >= threshold][:2]
    return chosen


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.inference import load_model

    card = read_card(args.model)
    loaded = load_model(args.model, batch_size=32)
    test, _ = load_split(args, "test")
    labels = [r.subtype or "benign" for r in test.records]
    p = loaded.score(test.images)
    picks = choose(labels, p, card.threshold, args.per_class)
    if not picks:
        raise SystemExit("no flagged test image to show")
    maps = loaded.heatmaps(test.images[picks])
    fig, axes = plt.subplots(len(picks), 2, figsize=(5.2, 2.6 * len(picks)), squeeze=False)
    for row, (i, heat) in enumerate(zip(picks, maps, strict=True)):
        image = test.images[i]
        rgba = colorize(heat).astype(np.float64) / 255.0
        alpha = rgba[..., 3:4]
        blended = image / 255.0 * (1 - alpha) + rgba[..., :3] * alpha
        truth = SUBTYPE_LABELS.get(labels[i], "benign (false positive)")
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{Path(test.records[i].file).name}\n{truth}", fontsize=7)
        axes[row, 1].imshow(blended)
        axes[row, 1].set_title(f"p_leukemia {p[i]:.3f}, Grad-CAM overlay", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle("Where the network looked (Grad-CAM); not proof of leukaemia", fontsize=8, y=0.995)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out} ({len(picks)} images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.heatmap_figure", description=__doc__)
    add_split_script_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=2)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
