"""Where the heatmaps lie: on stained cells or on the slide's background, per class.

    python -m model.heatmap_focus --model model/weights/lenet_lld.keras \
        --data ../shared/data/taleqani-all --split val

For every image of the split that the model flags, the share of its Grad-CAM
heat (``model.explain``, the workers' maps) that falls on stained pixels (HSV saturation
above about 0.2, ``model.quality.is_stained``: the cells; the rest is pale background), and that
share divided by the stained pixels' share of the image (1: heat spread as if blind to the
cells; above 1: drawn to them). A network that reads background colour, the data's known
shortcut, puts its heat off the cells. Validation by default: the test split stays for the
figures reported once.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from model.card import SUBTYPES, read_card
from model.evaluate import add_split_script_arguments, load_split
from model.quality import is_stained


def stained_mask(pixels: np.ndarray) -> np.ndarray:
    """(H, W) True where a uint8 RGB image (H, W, 3) is stained."""
    return is_stained(np.asarray(Image.fromarray(pixels).convert("HSV")))


def heat_on_stain(heat: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(share of the heat on stained pixels, that share over the stained pixels' share); NaN
    where the map is empty or the image all stained or all background."""
    total, stained = float(heat.sum()), float(mask.mean())
    if total <= 0 or stained in (0.0, 1.0):
        return float("nan"), float("nan")
    share = float(heat[mask].sum()) / total
    return share, share / stained


def run(args: argparse.Namespace) -> int:
    from model.inference import load_model

    card = read_card(args.model)
    loaded = load_model(args.model, batch_size=32)
    part, name = load_split(args, args.split)
    labels = np.array([r.subtype or "benign" for r in part.records])
    to_person = np.flatnonzero(loaded.score(part.images) >= card.threshold)
    print(f"{args.model.name}, {name} split: images the model flags, by truth")
    if not len(to_person):
        return 0
    maps = loaded.heatmaps(part.images[to_person])
    masks = [stained_mask(part.images[i]) for i in to_person]
    found = [heat_on_stain(m, k) for m, k in zip(maps, masks, strict=True)]
    share, enrichment = (np.array(column) for column in zip(*found, strict=True))
    stain = np.array([float(k.mean()) for k in masks])
    print("class          n  heat on stain (median)  stain of image (median)  enrichment  <50%")
    for cls in ("benign", *SUBTYPES):
        ok = (labels[to_person] == cls) & np.isfinite(share)
        if not ok.any():
            continue
        print(
            f"{cls:12s} {int(ok.sum()):4d}  {np.median(share[ok]):22.2f}  "
            f"{np.median(stain[ok]):23.2f}  {np.median(enrichment[ok]):10.2f}  "
            f"{np.mean(share[ok] < 0.5):4.0%}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.heatmap_focus", description=__doc__)
    add_split_script_arguments(parser)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
