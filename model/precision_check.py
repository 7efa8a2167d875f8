"""What bfloat16 convolutions change in a model's results: every route, side by side.

    python -m model.precision_check --data ../shared/data/taleqani-all \\
        --other-lab ../shared/data/bccd-other-lab

Scores the model's validation and test splits, the other laboratory's smears and damaged
copies of test images (``model.corruptions``) as a worker does (quality measures, the network,
calibration, the domain gate, the route) once in float32 and once in bfloat16
(``model.precision``), and prints for each set how many routes differ and which way, the
largest change in p_leukemia and in the domain distance, and, for the labelled splits, ROC AUC,
sensitivity and specificity at the model's own threshold in each precision. Run it on a CPU
with native bfloat16; elsewhere oneDNN emulates it (same numbers, slowly).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from model import data as mdata
from model import metrics as mm
from model.card import read_card_data, write_card
from model.corruptions import KINDS, png_bytes
from model.gate import route_image
from model.precision import BFLOAT16, FLOAT32
from model.preprocess import Prepared, load_rgb, prepare


def compare(models: dict, prepared: list[Prepared], labels: np.ndarray | None) -> dict:
    """Both precisions' routes and scores for one set of prepared images."""
    pixels = np.stack([p.pixels for p in prepared])
    out: dict = {}
    for precision, model in models.items():
        scores = model.assess(pixels)
        routes = [
            route_image(
                model.gate, model.card.threshold, float(p), pr.quality, float(d), pr.original_mode
            ).route.value
            for pr, p, d in zip(prepared, scores.p_leukemia, scores.domain_distance, strict=True)
        ]
        out[precision] = (scores, routes)
    (s32, r32), (s16, r16) = out[FLOAT32], out[BFLOAT16]
    dp = np.abs(s32.p_leukemia - s16.p_leukemia)
    rel = np.abs(s32.domain_distance - s16.domain_distance) / np.abs(s32.domain_distance)
    result = {
        "n": len(prepared),
        "routes_changed": Counter(f"{a}->{b}" for a, b in zip(r32, r16, strict=True) if a != b),
        "max_dp": float(dp.max()),
        "p99_dp": float(np.quantile(dp, 0.99)),
        "max_rel_distance": float(np.nanmax(rel)) if np.isfinite(rel).any() else float("nan"),
    }
    if s32.subtype_probs is not None and s16.subtype_probs is not None:
        result["subtype_changed"] = int(
            np.sum(s32.subtype_probs.argmax(axis=1) != s16.subtype_probs.argmax(axis=1))
        )
    if labels is not None:
        threshold = models[FLOAT32].card.threshold
        result["metrics"] = {
            name: mm.binary_metrics(labels, s.p_leukemia, threshold) for name, (s, _) in out.items()
        }
    return result


def summary(r: dict) -> dict:
    """One set's comparison as the card keeps it."""
    return {
        "n": r["n"],
        "routes_changed": dict(r["routes_changed"]),
        "max_dp": r["max_dp"],
        "max_rel_distance": r["max_rel_distance"],
    }


def card_entry(results: dict[str, dict]) -> dict:
    """The card's ``precision_check`` from each set's ``compare``: the sets, and how many
    routes changed to cleared in all (``model.precision.checked`` lets ``auto`` use bfloat16
    only at 0)."""
    compared = {name: summary(r) for name, r in results.items()}
    to_cleared = sum(
        count
        for s in compared.values()
        for change, count in s["routes_changed"].items()
        if change.endswith("->cleared")
    )
    return {BFLOAT16: {"sets": compared, "changed_to_cleared": to_cleared}}


def record(weights: Path, sets: dict[str, tuple[list[Prepared], np.ndarray | None]]) -> dict:
    """``card_entry`` for the weights at ``weights`` on every non-empty set."""
    results = compare_all(load_both(weights), sets)
    return card_entry(results)


def load_both(weights: Path) -> dict:
    from model.inference import load_model

    return {p: load_model(weights, 32, p) for p in (FLOAT32, BFLOAT16)}


def compare_all(
    models: dict, sets: dict[str, tuple[list[Prepared], np.ndarray | None]]
) -> dict[str, dict]:
    return {
        name: compare(models, prepared, labels)
        for name, (prepared, labels) in sets.items()
        if prepared
    }


def report(name: str, r: dict) -> None:
    changed = dict(r["routes_changed"]) or "none"
    print(
        f"{name:26s} n={r['n']:4d}  routes changed: {changed}  max |dp| {r['max_dp']:.4f} "
        f"(p99 {r['p99_dp']:.4f})  max rel. distance change {r['max_rel_distance']:.4f}"
        + (f"  subtype changed: {r['subtype_changed']}" if "subtype_changed" in r else "")
    )
    for precision, m in r.get("metrics", {}).items():
        print(
            f"{'':26s} {precision:9s} AUC {m['auc']:.4f}  sensitivity {m['sensitivity']:.4f}  "
            f"specificity {m['specificity']:.4f}"
        )


def run(args: argparse.Namespace) -> int:
    models = load_both(args.model)
    gate, size = models[FLOAT32].gate, models[FLOAT32].card.input_size
    band = gate.hue_band if gate is not None else None
    split = mdata.read_split(mdata.split_path(args.model))["splits"]
    rng = np.random.default_rng(args.seed)
    print(f"{args.model.name}: threshold {models[FLOAT32].card.threshold:.4f}")
    sets: dict[str, tuple[list[Prepared], np.ndarray | None]] = {}
    for part in ("val", "test"):
        blobs = [(args.data / r["file"]).read_bytes() for r in split[part]]
        labels = np.array([r["label"] for r in split[part]])
        sets[part] = ([prepare(b, band, size) for b in blobs], labels)
        if part != "test":
            continue
        order = rng.permutation(len(blobs))[: args.per_kind]
        base = [load_rgb(blobs[i]) for i in order]
        for kind, make in KINDS.items():
            made = [m for m in (make(im, rng) for im in base) if m is not None]
            sets[f"test, {kind}"] = ([prepare(png_bytes(m), band, size) for m in made], None)
    if args.other_lab:
        files = sorted(f for f in args.other_lab.iterdir() if f.is_file())
        sets["other laboratory"] = ([prepare(f.read_bytes(), band, size) for f in files], None)
    results = compare_all(models, sets)
    for name, r in results.items():
        report(name, r)
    if args.write:
        card = read_card_data(args.model)
        if card is None:
            raise SystemExit(f"{args.model} has no card to write to")
        card["precision_check"] = card_entry(results)
        write_card(args.model, card)
        print(f"written to the card of {args.model.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.precision_check", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("model/weights/lenet_lld.keras"))
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--other-lab", type=Path, default=None, help="smears of another lab")
    parser.add_argument("--per-kind", type=int, default=100, help="damaged copies per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write", action="store_true", help="record the comparison in the model's card"
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
