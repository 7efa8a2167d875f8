"""Evaluate a weights file on a folder of class folders (``leukoscreen evaluate``).

    python -m model.evaluate --model model/weights/lenet_lld.keras --data DIR --out reports/x

Scores with ``model.inference.load_model`` (the workers' code path) at the threshold stored
in the model's card; writes ``report.json`` and PNG plots. When a split file sits next to the
model and ``DIR`` holds its images, the test split is evaluated by default; on any other
folder every image is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from model import data as mdata
from model import metrics as mm
from model.card import file_sha256, history_path, read_card, read_card_data
from model.gate import Decision, route_image
from model.inference import LoadedModel, Scores, load_model
from model.quality import measure

HEADLINE = ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc", "loss")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="weights file (`leukoscreen evaluate` defaults to LEUKOSCREEN_MODEL_PATH)",
    )
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument(
        "--split",
        default="auto",
        choices=["auto", "test", "val", "train", "all"],
        help="auto: the test split when the model's split file covers DIR, else all images",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/leukoscreen-cache"))
    parser.add_argument("--no-plots", action="store_true")


def add_split_script_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--data`` and ``--cache-dir``, as every script that looks at one split of
    a model's data takes them (``heatmap_figure``, ``heatmap_focus``, ``tta_check``)."""
    parser.add_argument("--model", type=Path, default=Path("model/weights/lenet_lld.keras"))
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/leukoscreen-cache"))


def load_split(args: argparse.Namespace, split: str) -> tuple[mdata.Dataset, str]:
    """The model's ``split`` of ``args.data`` at the model's input size (see
    ``add_split_script_arguments``), and the split's name."""
    size = read_card(args.model).input_size
    dataset = mdata.load_dataset(args.data, cache_dir=args.cache_dir, size=size)
    return select_split(dataset, args.model, split)


def select_split(dataset: mdata.Dataset, weights: Path, split: str) -> tuple[mdata.Dataset, str]:
    """The images to evaluate and the name of what they are."""
    path = mdata.split_path(weights)
    if split == "all":
        return dataset, "all"
    if not path.is_file():
        if split == "auto":
            return dataset, "all"
        raise FileNotFoundError(f"--split {split} needs {path}")
    saved = mdata.read_split(path)["splits"]
    name = "test" if split == "auto" else split
    wanted = {(r["file"], r["sha256"]) for r in saved[name]}
    keep = {r.file for r in dataset.records if (r.file, r.sha256) in wanted}
    if split == "auto" and not keep:
        return dataset, "all"  # an unseen folder: none of the split's images are here
    if len(keep) < len(wanted):
        print(f"warning: {len(wanted) - len(keep)} {name} images of {path.name} not in --data")
    return dataset.subset(keep), name


def assess(loaded: LoadedModel, images_u8: np.ndarray) -> Scores:
    """p_leukemia and domain distance exactly as the workers compute them."""
    parts = [loaded.assess(images_u8[i : i + 512]) for i in range(0, len(images_u8), 512)]
    if not parts:
        return Scores(np.zeros((0,)), np.zeros((0,)))
    subtypes = [s.subtype_probs for s in parts]
    return Scores(
        np.concatenate([s.p_leukemia for s in parts]),
        np.concatenate([s.domain_distance for s in parts]),
        None if any(s is None for s in subtypes) else np.concatenate(subtypes),  # type: ignore[arg-type]
    )


def score(loaded: LoadedModel, images_u8: np.ndarray) -> np.ndarray:
    return assess(loaded, images_u8).p_leukemia


def routes(
    loaded: LoadedModel, data_dir: Path, subset: mdata.Dataset, scores: Scores
) -> list[Decision]:
    """Each image's route, with the workers' quality measures and gate."""
    band = loaded.gate.hue_band if loaded.gate is not None else None
    decisions = []
    for i, record in enumerate(subset.records):
        with PILImage.open(data_dir / record.file) as header:
            size, mode = header.size, header.mode
        # The cached uint8 pixels are exactly the resized image the worker measures.
        measures = measure(PILImage.fromarray(subset.images[i]), size, band)
        decisions.append(
            route_image(
                loaded.gate,
                loaded.card.threshold,
                float(scores.p_leukemia[i]),
                measures,
                float(scores.domain_distance[i]),
                mode,
            )
        )
    return decisions


def build_report(y, p, groups, threshold, card, baseline_p=None) -> dict:
    report = mm.binary_metrics(y, p, threshold)
    report["ci95_wilson"] = mm.proportion_cis(report["confusion"])
    if len(np.unique(y)) == 2:
        report["ci95_group_bootstrap"] = mm.group_bootstrap_ci(y, p, groups, threshold)
    report["sweep"] = mm.threshold_sweep(
        y, p, sorted({*np.round(np.linspace(0.05, 0.95, 19), 2), round(threshold, 6)})
    )
    if baseline_p is not None:
        base = card["colour_baseline"]
        report["colour_baseline"] = mm.binary_metrics(y, baseline_p, base["threshold"])
    return report


# ---- plots (matplotlib Agg) ------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, history[key], label=f"train {key}")
        ax.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        if "best_epoch" in history:
            ax.axvline(history["best_epoch"], color="grey", ls=":", label="best (restored)")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_f1(y, p, threshold: float, path: Path) -> None:
    plt = _plt()
    ts = np.linspace(0.01, 0.99, 99)
    rows = mm.threshold_sweep(y, p, ts)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("f1", "sensitivity", "specificity"):
        ax.plot(ts, [r[key] for r in rows], label=key)
    ax.axvline(threshold, color="grey", ls=":", label=f"shipped threshold {threshold:.3f}")
    ax.set_xlabel("threshold on p_leukemia")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(y, p, baseline_p, path: Path) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    curves = [("model", p)] + ([("colour baseline", baseline_p)] if baseline_p is not None else [])
    for name, scores in curves:
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(cm: dict, path: Path) -> None:
    plt = _plt()
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["pred negative", "pred leukemia"])
    ax.set_yticks([0, 1], ["negative", "leukemia"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, weights: Path, y, p, baseline_p, report: dict) -> list[str]:
    written = []
    history = history_path(weights)
    # Weights only averaged from given ones (``--epochs 0``) have no main fit to plot.
    if history.is_file() and "loss" in (fitted := json.loads(history.read_text())):
        plot_history(fitted, out / "history.png")
        written.append("history.png")
    plot_f1(y, p, report["threshold"], out / "f1_threshold.png")
    plot_confusion(report["confusion"], out / "confusion.png")
    written += ["f1_threshold.png", "confusion.png"]
    if report["auc"] is not None:
        plot_roc(y, p, baseline_p, out / "roc.png")
        written.append("roc.png")
    return written


def print_summary(report: dict) -> None:
    cm = report["confusion"]
    print(
        f"{report['model']['name']} on {report['data']['split']} ({report['n']} images, "
        f"threshold {report['threshold']:.4f})"
    )
    for key in HEADLINE:
        value = report[key]
        base = report.get("colour_baseline", {}).get(key)
        text = "n/a" if value is None else f"{value:.4f}"
        extra = "" if base is None else f"   colour baseline {base:.4f}"
        print(f"  {key:12s} {text}{extra}")
    print(f"  confusion    tp={cm['tp']} fp={cm['fp']} tn={cm['tn']} fn={cm['fn']}")
    if sub := report.get("subtype"):
        per = ", ".join(
            f"{k} {_opt(v['sensitivity'])} (n={v['n']})" for k, v in sub["per_class"].items()
        )
        print(f"  subtype      accuracy {_opt(sub['accuracy'])} on {sub['n']} positives: {per}")
    r = report["routes"]
    print(
        f"  routes       {r['routes']}; manual review {r['manual_review']:.2%} "
        f"(reasons {r['reasons']})"
    )
    print(
        f"  judged       {r['judged']} images: sensitivity {_opt(r['sensitivity'])}, "
        f"specificity {_opt(r['specificity'])} among those the gate let the model judge"
    )
    print("  threshold  sensitivity  specificity  precision  f1")
    for row in report["sweep"]:
        mark = "  <- model threshold" if row["threshold"] == round(report["threshold"], 6) else ""
        print(
            f"  {row['threshold']:9.4f}  {row['sensitivity']:11.4f}  {row['specificity']:11.4f}"
            f"  {row['precision']:9.4f}  {row['f1']:.4f}{mark}"
        )


def _opt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def run(args: argparse.Namespace) -> int:
    # Settings are the entry point's business: `leukoscreen evaluate` fills in the default.
    if args.model is None:
        raise SystemExit("give --model: the weights file to evaluate")
    weights = Path(args.model)
    card = read_card(weights)
    # A network without a card is evaluated all the same, with the defaults below.
    raw_card: dict[str, Any] = dict(read_card_data(weights) or {})
    block = raw_card.get("data", {}).get("split", {}).get("block", 20)
    dataset = mdata.load_dataset(
        args.data, block=block, cache_dir=args.cache_dir, size=card.input_size
    )
    subset, split_name = select_split(dataset, weights, args.split)
    if not subset.records:
        raise SystemExit(f"no images to evaluate in {args.data}")
    y, groups = subset.labels, [r.group for r in subset.records]
    loaded = load_model(weights, args.batch_size)
    scores = assess(loaded, subset.images)
    p = scores.p_leukemia
    decisions = routes(loaded, args.data, subset, scores)
    baseline_p = None
    if "colour_baseline" in raw_card:
        feats = mm.colour_features(subset.images)
        baseline_p = mm.colour_baseline_scores(raw_card["colour_baseline"], feats)
    report = build_report(y, p, groups, card.threshold, raw_card, baseline_p)
    report["routes"] = {**mm.route_summary(decisions, y), **mm.judged_metrics(decisions, y)}
    if scores.subtype_probs is not None:
        try:
            classes = subset.classes
        except ValueError as exc:  # positives without subtype folders: nothing to compare
            print(f"subtype not evaluated: {exc}")
        else:
            report["subtype"] = mm.subtype_metrics(classes, scores.subtype_probs)
    report["model"] = {"path": str(weights), "name": card.name, "sha256": file_sha256(weights)}
    report["data"] = {
        "dir": str(args.data),
        "split": split_name,
        "skipped_undecodable": dataset.skipped,
        "dropped_duplicates": len(dataset.duplicates),
    }
    out = args.out or Path("reports") / f"{weights.stem}-{split_name}"
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        report["plots"] = write_plots(out, weights, y, p, baseline_p, report)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    print(f"report: {out / 'report.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
