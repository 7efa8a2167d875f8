"""Fit the gate of a trained network and measure it (``leukoscreen fit-gate``).

    python -m model.fit_gate --model model/weights/lenet_lld.keras \
        --data ../shared/data/taleqani-all --other-lab ../shared/data/bccd-other-lab

Uses the grouped split saved with the weights (``X.split.json``):
- training split: quality limits, stain hue band, domain statistics;
- validation split: domain threshold (its ``--domain-quantile``), calibration, then the
  operating threshold by the sensitivity rule on calibrated scores, and the drift reference;
- test split: routed fraction and sensitivity/specificity among the images the model judges.

Made-up out-of-domain sets (``model.corruptions``) are made twice: from validation images
(the "tuning" sets, which were looked at while choosing the design) and from test images (the
"held-out" sets, reported, never tuned on). Other-laboratory images are split the same way,
even-numbered files for tuning, odd for the report. Every image goes through ``prepare``, the
workers' own decode, resize and quality code.

Writes into ``X.json`` (threshold, ``gate``, ``calibration``, ``gate_evaluation``, metrics
recomputed on calibrated scores) and ``X.gate.npz``; with ``--plots DIR``, reliability diagrams.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model import data as mdata
from model import metrics as mm
from model import precision_check
from model.card import card_path, file_sha256, read_card_data, write_card
from model.corruptions import KINDS, png_bytes
from model.gate import (
    MEAN_AND_STD,
    Gate,
    Route,
    expected_calibration_error,
    fit_calibration,
    fit_domain,
    fit_hue_band,
    fit_limits,
    model_version,
    reliability,
    route_image,
    write_statistics,
)
from model.preprocess import Prepared, decode, load_rgb, prepare, prepare_decoded, scale
from model.quality import MEASURES, hue_histogram
from model.train import summarise

DRIFT_MEASURES = ("p_leukemia", "domain_distance", *MEASURES[:7])

CAMERA = "camera"
DIHEDRAL = "dihedral"
# A smear has no up, and the network was trained on every rotation and both mirror images
# (``model.train``'s augmentation), but the domain statistics fitted on the camera's
# orientation alone send about half of turned or mirrored fields to a person. Fitted on all
# eight views they let more damaged captures through, so "camera" stays the default
# (docs/model-card/lenet_lld-notes.md, *Gate: turned and mirrored fields*).
VIEWS: dict[str, Any] = {
    "as taken": lambda x: x,
    "rotated 90": lambda x: np.rot90(x, 1, axes=(-3, -2)),
    "rotated 180": lambda x: np.rot90(x, 2, axes=(-3, -2)),
    "rotated 270": lambda x: np.rot90(x, 3, axes=(-3, -2)),
    "mirrored left-right": lambda x: np.flip(x, axis=-2),
    "mirrored top-bottom": lambda x: np.flip(x, axis=-3),
    "transposed": lambda x: np.swapaxes(x, -3, -2),
    "anti-transposed": lambda x: np.rot90(np.swapaxes(x, -3, -2), 2, axes=(-3, -2)),
}
ORIENTATIONS = {CAMERA: ("as taken",), DIHEDRAL: tuple(VIEWS)}


def oriented(pixels: np.ndarray, views: tuple[str, ...]) -> list[np.ndarray]:
    """Each of ``views`` of a stack of (N, H, W, 3) pixels; a non-square image keeps only
    the views that keep its shape."""
    out = [np.ascontiguousarray(VIEWS[v](pixels)) for v in views]
    return [x for x in out if x.shape == pixels.shape]


def evaluate_orientations(
    net: Network,
    gate: Gate,
    threshold: float,
    prepared: list[Prepared],
    labels: np.ndarray,
    band: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """Routes of the images in each view of a square (``VIEWS``), each view through the
    workers' own decode, measures and route; a non-square input gets the views that keep
    its shape."""
    pixels = np.stack([pr.pixels for pr in prepared])
    out: dict[str, dict[str, Any]] = {}
    for view in VIEWS:
        turned = oriented(pixels, (view,))
        if not turned:
            continue
        prep = _prepare_all(
            [png_bytes(Image.fromarray(x)) for x in turned[0]], band, net.input_size
        )
        praw, pfeat = net.run(prep)
        decisions = _decide_all(
            gate, threshold, prep, gate.calibrate(praw), gate.domain_distance(pfeat)
        )
        out[view] = {**mm.route_summary(decisions, labels), **mm.judged_metrics(decisions, labels)}
        print(f"{view:20s} manual review {out[view]['manual_review']:.3f}", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("model/weights/lenet_lld.keras"))
    parser.add_argument("--data", type=Path, required=True, help="the training folder")
    parser.add_argument("--other-lab", type=Path, default=None, help="smears of another lab")
    parser.add_argument("--domain-quantile", type=float, default=0.99)
    parser.add_argument("--target-sensitivity", type=float, default=0.99)
    parser.add_argument("--per-kind", type=int, default=150, help="images per made-up set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plots", type=Path, default=None, help="folder for PNG plots")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--orientations",
        choices=tuple(ORIENTATIONS),
        default=CAMERA,
        help="the training and validation images' views the domain statistics and threshold "
        "are fitted on: as the camera took them, or also rotated by 90, 180 and 270 degrees "
        "and mirrored (the eight views of a square, one class mean per view)",
    )


class Network:
    """Raw (uncalibrated) scores and gate features, as the workers' graph computes them."""

    def __init__(self, weights: Path, batch_size: int) -> None:
        import keras

        from model.card import read_card
        from model.folding import fold_batch_norm
        from model.gate_features import feature_network

        facts = read_card(weights)
        self.output = facts.output
        self.input_size = facts.input_size
        network = feature_network(fold_batch_norm(keras.saving.load_model(weights)), MEAN_AND_STD)
        if network is None:
            raise SystemExit("the gate needs a network that is a simple chain of layers")
        self.network = network
        self.batch_size = batch_size

    def run(self, prepared: list[Prepared]) -> tuple[np.ndarray, np.ndarray]:
        return self.run_pixels(np.stack([p.pixels for p in prepared]))

    def run_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from model.card import to_p_leukemia

        x = scale(pixels)
        raw, features = self.network.predict(x, batch_size=self.batch_size, verbose=0)
        return to_p_leukemia(raw, self.output), np.asarray(features, np.float64)


def _oriented_features(
    net: Network, prepared: list[Prepared], as_taken: np.ndarray, views: tuple[str, ...]
) -> np.ndarray:
    """Gate features of every view of the images (``as_taken``'s first, already computed)."""
    if not prepared or len(views) == 1:  # the camera's view alone: nothing more to compute
        return as_taken
    pixels = np.stack([p.pixels for p in prepared])
    others = [net.run_pixels(x)[1] for x in oriented(pixels, views)[1:]]
    return np.concatenate([as_taken, *others])


def _prepare_all(
    blobs: list[bytes], band: tuple[int, int] | None, size: tuple[int, int]
) -> list[Prepared]:
    return [prepare(b, band, size) for b in blobs]


def _measures(prepared: list[Prepared]) -> np.ndarray:
    return np.array([[p.quality[m] for m in MEASURES] for p in prepared], np.float64)


def _decide_all(gate: Gate, threshold: float, prepared, p, distance) -> list:
    return [
        route_image(gate, threshold, float(pi), pr.quality, float(di), pr.original_mode)
        for pr, pi, di in zip(prepared, p, distance, strict=True)
    ]


def _quantile_edges(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    return [float(x) for x in np.quantile(values, np.linspace(0.1, 0.9, 9))]


def _plot_reliability(path: Path, curves: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, bins in curves.items():
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], marker="o", label=name)
    ax.set_xlabel("mean predicted p_leukemia")
    ax.set_ylabel("observed share leukemic")
    ax.set_title("Reliability, test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    weights = args.model
    card = read_card_data(weights)
    if card is None:
        raise SystemExit(f"{card_path(weights)} not found: fit-gate completes the training card")
    split = mdata.read_split(mdata.split_path(weights))["splits"]
    net = Network(weights, args.batch_size)
    rng = np.random.default_rng(args.seed)

    # 1. Training split: everything the gate measures against.
    blobs = {name: [(args.data / r["file"]).read_bytes() for r in split[name]] for name in split}
    labels = {name: np.array([r["label"] for r in split[name]]) for name in split}
    # Decoded once: the stain hue band comes from the training images, and every measure
    # after it needs that band.
    decoded = {name: [decode(b, net.input_size) for b in blobs[name]] for name in split}
    band = fit_hue_band(np.stack([hue_histogram(d.image) for d in decoded["train"]]))
    prepared = {
        name: [prepare_decoded(d, band, net.input_size) for d in decoded[name]] for name in split
    }
    raw, feats = {}, {}
    for name in split:
        raw[name], feats[name] = net.run(prepared[name])
        print(f"{name}: {len(prepared[name])} images scored", flush=True)
    limits = fit_limits(_measures(prepared["train"]))
    views = ORIENTATIONS[args.orientations]
    fitted_on = {
        name: _oriented_features(net, prepared[name], feats[name], views)
        for name in ("train", "val")
    }
    n_views = len(fitted_on["train"]) // len(labels["train"])
    # One group per class and view: labels 0, 1 as taken, 2, 3 in the next view, and so on.
    view_of = np.repeat(np.arange(n_views), len(labels["train"]))
    view_groups = np.tile(labels["train"], n_views) + 2 * view_of
    means, precision = fit_domain(fitted_on["train"], view_groups)
    provisional = write_statistics(
        weights,
        Gate(band, limits, float("inf"), means, precision, (1.0, 0.0), {}, "", MEAN_AND_STD),
    )

    # 2. Validation split: domain threshold, calibration, operating threshold, drift reference.
    dist = {name: provisional.domain_distance(feats[name]) for name in split}
    val_views = provisional.domain_distance(fitted_on["val"])
    domain_threshold = float(np.quantile(val_views, args.domain_quantile))
    ab = fit_calibration(raw["val"], labels["val"])
    gate = replace(provisional, domain_threshold=domain_threshold, calibration=ab)
    p = {name: gate.calibrate(raw[name]) for name in split}
    val_decisions = _decide_all(gate, 0.5, prepared["val"], p["val"], dist["val"])
    kept = np.array([d.route != Route.MANUAL_REVIEW for d in val_decisions])
    if len(set(labels["val"][kept])) < 2:  # a tiny validation split: judge on all of it
        kept[:] = True
    threshold = mm.choose_threshold(labels["val"][kept], p["val"][kept], args.target_sensitivity)
    val_measures = _measures(prepared["val"])[kept]
    reference = {
        "p_leukemia": _quantile_edges(p["val"][kept]),
        "domain_distance": _quantile_edges(dist["val"][kept]),
        **{m: _quantile_edges(val_measures[:, MEASURES.index(m)]) for m in DRIFT_MEASURES[2:]},
    }
    gate = replace(gate, reference=reference)

    # 3. Test split and made-up out-of-domain sets.
    evaluation: dict[str, Any] = {}
    for name in ("val", "test"):
        decisions = _decide_all(gate, threshold, prepared[name], p[name], dist[name])
        evaluation[name] = {
            **mm.route_summary(decisions, labels[name]),
            **mm.judged_metrics(decisions, labels[name]),
        }
    evaluation["orientations"] = evaluate_orientations(
        net, gate, threshold, prepared["test"], labels["test"], band
    )
    sets: dict[str, dict[str, Any]] = {"tuning": {}, "held_out": {}}
    for part, source in (("tuning", "val"), ("held_out", "test")):
        order = rng.permutation(len(blobs[source]))[: args.per_kind]
        base = [load_rgb(blobs[source][i]) for i in order]
        base_labels = labels[source][order]
        for kind, make in KINDS.items():
            made_blobs, made_labels = [], []
            for im, y in zip(base, base_labels, strict=True):
                made = make(im, rng)
                if made is not None:  # e.g. no cell to cut out of this field
                    made_blobs.append(png_bytes(made))
                    made_labels.append(y)
            sets[part][kind] = (made_blobs, np.array(made_labels))
        if args.other_lab:
            files = sorted(f for f in args.other_lab.iterdir() if f.is_file())
            chosen = files[0::2] if part == "tuning" else files[1::2]
            other = [f.read_bytes() for f in chosen]
            sets[part]["other_lab"] = (other, None)
            squares = []
            for blob in other:
                im = load_rgb(blob)
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                squares.append(
                    png_bytes(
                        im.crop((left, top, left + side, top + side)).resize(
                            (224, 224), Image.Resampling.LANCZOS
                        )
                    )
                )
            sets[part]["other_lab_square_224"] = (squares, None)
    # Kept for the bfloat16 check below: the held-out damaged images, never used to tune.
    held_out: dict[str, tuple[list[Prepared], np.ndarray | None]] = {}
    for part, kinds in sets.items():
        evaluation[part] = {}
        for kind, (kind_blobs, kind_labels) in kinds.items():
            prep = _prepare_all(kind_blobs, band, net.input_size)
            if part == "held_out":
                held_out[f"held out, {kind}"] = (prep, None)
            praw, pfeat = net.run(prep)
            decisions = _decide_all(
                gate, threshold, prep, gate.calibrate(praw), gate.domain_distance(pfeat)
            )
            evaluation[part][kind] = mm.route_summary(decisions, kind_labels)
            print(
                f"{part:8s} {kind:22s} manual review {evaluation[part][kind]['manual_review']:.3f}",
                flush=True,
            )

    # 4. Calibration report and the card.
    calibration: dict[str, Any] = {
        "method": "Platt scaling on the logit (temperature and bias), fitted on validation",
        "a": ab[0],
        "b": ab[1],
        "ece_before": {n: expected_calibration_error(raw[n], labels[n]) for n in ("val", "test")},
        "ece_after": {n: expected_calibration_error(p[n], labels[n]) for n in ("val", "test")},
        "reliability_test_before": reliability(raw["test"], labels["test"]),
        "reliability_test_after": reliability(p["test"], labels["test"]),
    }
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        _plot_reliability(
            args.plots / "reliability.png",
            {
                "before": calibration["reliability_test_before"],
                "after": calibration["reliability_test_after"],
            },
        )
    groups = {n: [r["group"] for r in split[n]] for n in split}
    card["threshold"] = threshold
    card["operating_point"] = (
        f"highest validation specificity with sensitivity >= {args.target_sensitivity}, on "
        "calibrated scores of the validation images the gate lets the model judge"
    )
    card["metrics"] = summarise(labels["test"], p["test"], threshold, groups["test"])
    card["validation"] = mm.binary_metrics(labels["val"], p["val"], threshold)
    card["gate"] = gate.describe()
    card["gate"]["domain_quantile"] = args.domain_quantile
    card["gate"]["orientations"] = {"name": args.orientations, "views": list(views)}
    card["gate"]["features"] = (
        "log(x + 0.001) of the penultimate layer and of the mean and spatial standard "
        f"deviation of each pooling block's channels ({means.shape[1]} values); squared "
        "Mahalanobis distance to the nearest of the class means, one per class in each view "
        f"of the training images ({len(means)} means), tied covariance shrunk by 0.001 "
        "towards a scaled identity"
    )
    card["calibration"] = calibration
    card["gate_evaluation"] = evaluation
    card["sha256"] = model_version(file_sha256(weights), card, gate)
    write_card(weights, card)
    # 5. What bfloat16 workers would change (``model.precision``), on the card they read.
    card["precision_check"] = precision_check.record(
        weights,
        {
            "val": (prepared["val"], labels["val"]),
            "test": (prepared["test"], labels["test"]),
            **held_out,
        },
    )
    write_card(weights, card)
    bf16 = card["precision_check"]["bfloat16"]
    print(f"bfloat16 check: {bf16['changed_to_cleared']} routes changed to cleared", flush=True)
    t = evaluation["test"]
    print(
        f"threshold {threshold:.4f}; domain threshold {domain_threshold:.2f}; test: "
        f"{t['manual_review']:.3%} to manual review, sensitivity {t['sensitivity']:.4f}, "
        f"specificity {t['specificity']:.4f} among judged; ECE test "
        f"{calibration['ece_before']['test']:.4f} -> {calibration['ece_after']['test']:.4f}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.fit_gate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
