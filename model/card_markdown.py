"""Render the Markdown model card (``X.md``) from the JSON cards (``model/card.py``).

    python -m model.card_markdown --out model/weights/lenet_lld.md \
        model/weights/lenet_lld.keras model/weights/lenet_lld_thesis.keras

The first weights file is the shipped default; the others are listed beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.card import (
    DEFAULT_INPUT_SIZE,
    P_CLASSES,
    SUBTYPE_LABELS,
    CardData,
    card_path,
    read_card_data,
)

GOAL = {"sensitivity": 0.99, "specificity": 0.95, "auc": 0.99}


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _row(label: str, m: dict) -> str:
    w, b, cm = m.get("ci95_wilson", {}), m.get("ci95_group_bootstrap", {}), m["confusion"]
    cells = [
        label,
        f"{m['auc']:.4f}{_ci(b.get('auc'))}",
        f"{m['sensitivity']:.4f}{_ci(w.get('sensitivity'))}",
        f"{m['specificity']:.4f}{_ci(w.get('specificity'))}",
        f"{m['precision']:.4f}",
        f"{m['f1']:.4f}{_ci(b.get('f1'))}",
        f"{m['accuracy']:.4f}",
        f"{m['loss']:.4f}",
        f"{m['threshold']:.4f}",
        f"{cm['tp']}/{cm['fp']}/{cm['tn']}/{cm['fn']}",
    ]
    return "| " + " | ".join(cells) + " |"


def goal_met(m: dict) -> bool:
    return (
        m["sensitivity"] >= GOAL["sensitivity"]
        and m["specificity"] >= GOAL["specificity"]
        and (m["auc"] or 0) >= GOAL["auc"]
    )


def _card(weights: Path) -> CardData:
    card = read_card_data(weights)
    if card is None:
        raise SystemExit(f"{card_path(weights)} not found: train the network first")
    return card


def render(weights: list[Path]) -> str:
    cards = [(w, _card(w)) for w in weights]
    main_w, main = cards[0]
    d, t = main["data"], main["training"]
    lines = [
        f"# Model card: `{main_w.name}` ({main['name']})",
        "",
        "## Intended use",
        main["intended_use"],
        "Output: `p_leukemia` for one field-of-view image; the image is flagged when "
        f"`p_leukemia >= threshold` (stored in `{card_path(main_w).name}`)"
        + (
            ", and the most likely B-ALL subtype with each subtype's probability given "
            "leukemia (a model estimate, shown to the reviewer, not a diagnosis)."
            if main.get("output") == P_CLASSES
            else "."
        ),
        "",
        "## Files",
        "| file | network | input | params | threshold | SHA-256 |",
        "|---|---|---|---|---|---|",
    ]
    for w, c in cards:
        width, height = c.get("input_size", DEFAULT_INPUT_SIZE)
        lines.append(
            f"| `{w.name}` | {c['architecture']} | {width}x{height} | {c['params']:,} | "
            f"{c['threshold']:.4f} | `{c['sha256']}` |"
        )
    sizes = d["sizes"]
    lines += [
        "",
        "## Data",
        d["source"],
        "",
        f"Split: {d['dropped_duplicates']} byte-identical duplicates dropped (SHA-256 of the "
        f"file), {d['skipped_undecodable']} undecodable files skipped; images grouped into blocks"
        f" of {d['split']['block']} consecutive file numbers within a class folder (consecutive "
        "numbers come from the same slide); whole groups shuffled (seed "
        f"{d['split']['seed']}) and assigned per class folder to test "
        f"({d['split']['test_frac']:.0%}), validation ({d['split']['val_frac']:.0%}) and "
        f"training. Sizes: train {sizes['train']}, validation {sizes['val']}, test "
        f"{sizes['test']} images (`{d['split_file']}` lists every file with its SHA-256).",
        "",
        "## Results on the held-out test split",
        f"Threshold chosen on the validation split: {main['operating_point']}. 95% CIs: Wilson "
        "for sensitivity/specificity (images treated as independent), group bootstrap "
        "(resampling slide blocks, 1000x) for AUC and F1.",
        "",
        "| model | ROC AUC | sensitivity | specificity | precision | F1 | accuracy | log loss"
        " | threshold | tp/fp/tn/fn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w, c in cards:
        lines.append(_row(f"{c['name']} (`{w.name}`)", c["metrics"]))
    base = main["colour_baseline"]
    lines.append(_row("colour-only logistic regression (baseline)", base["test"]))
    lines += [
        "",
        "Goal (sensitivity >= 0.99 at specificity >= 0.95, ROC AUC >= 0.99): "
        + "; ".join(
            f"{c['name']}: {'met' if goal_met(c['metrics']) else 'MISSED'}" for _, c in cards
        )
        + ".",
        "",
        "Validation split at the same threshold: "
        + "; ".join(
            f"{c['name']}: sensitivity {c['validation']['sensitivity']:.4f}, specificity "
            f"{c['validation']['specificity']:.4f}, AUC {c['validation']['auc']:.4f}"
            for _, c in cards
        )
        + ".",
        "",
        "The colour baseline is a logistic regression on 18 per-image colour statistics "
        "(mean and 5/25/50/75/95th percentiles per RGB channel), fitted on the training split,"
        " threshold chosen on validation by the same rule; its coefficients are stored in the "
        "JSON card so `evaluate` reports it on any folder.",
        "",
    ]
    lines += subtype_section(main)
    lines += gate_section(main)
    lines += precision_section(main)
    lines += [
        "## Training",
    ]
    for w, c in cards:
        tr = c["training"]
        # A run that starts from other weights (--init) is only reproducible from those.
        start = f"started from {tr['initialised_from']}; " if tr.get("initialised_from") else ""
        averaged = f" then the {tr['weight_averaging']};" if tr.get("weight_averaging") else ""
        lines += [
            f"- `{w.name}`: `{tr['command']}`; {start}{tr['epochs_run']} epochs "
            f"(best {tr['best_epoch']}, restored),{averaged} "
            f"fit {tr['fit_seconds'] / 60:.1f} min, total {tr['total_seconds'] / 60:.1f} min "
            f"on 2 CPU cores (shared); {tr['optimizer']}, "
            f"{tr['loss']}, batch {tr['batch_size']}, class weights "
            f"{ {k: round(v, 3) for k, v in tr['class_weight'].items()} }.",
        ]
    lines += [
        f"- Augmentation: {t['augmentation']}.",
        f"- Early stopping on {t.get('early_stopping', 'val_loss')}; learning rate halved after "
        "4 epochs without improvement; seeds fixed "
        "(`keras.utils.set_random_seed`), CPU float reductions may still vary slightly.",
        "- Weights saved without optimizer state.",
        "",
        "## Reproduce / evaluate",
        "```",
        "python -m model.evaluate --model model/weights/" + main_w.name + " --data DIR",
        "```",
        "With the training folder, the test split is evaluated (`--split test|val|all`); on "
        "any other folder, every image.",
        "",
    ]
    return "\n".join(lines)


def subtype_section(card: CardData) -> list[str]:
    """Subtype accuracy on the positive test images: confusion matrix, per-class sensitivity."""
    sub = card.get("subtype_metrics")
    if not sub:
        return []
    t, v = sub["test"], sub["validation"]
    names = [SUBTYPE_LABELS[k] for k in t["labels"]]
    lines = [
        "## B-ALL subtype (positive images)",
        "The same softmax that gives `p_leukemia` (one minus the benign probability) gives each"
        " subtype's probability given leukemia; the most likely one is stored with every "
        "result. Scored on the leukemic images of the grouped test split (the subtype of a "
        "benign image means nothing); 95% Wilson intervals.",
        "",
        f"Test accuracy {_opt(t['accuracy'])}{_ci(t['accuracy_ci95_wilson'])} on {t['n']} "
        f"positive images (validation {_opt(v['accuracy'])} on {v['n']}). Goal >= 0.95: "
        f"{'met' if (t['accuracy'] or 0) >= 0.95 else 'MISSED'}.",
        "",
        "| true \\ predicted | " + " | ".join(names) + " | sensitivity |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for i, key in enumerate(t["labels"]):
        per = t["per_class"][key]
        cells = [str(n) for n in t["confusion"][i]]
        lines.append(
            f"| {SUBTYPE_LABELS[key]} | "
            + " | ".join(cells)
            + f" | {_opt(per['sensitivity'])}{_ci(per['ci95_wilson'])} |"
        )
    lines.append("")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def gate_section(card: CardData) -> list[str]:
    """The gate: its limits, calibration, and how it routed real and made-up images."""
    gate = card.get("gate")
    if not gate or "gate_evaluation" not in card:
        return ["## Gate", "This network has no fitted gate: every image goes to a person.", ""]
    ev, cal = card["gate_evaluation"], card["calibration"]
    lines = [
        "## Gate: which images the model may judge",
        "Every scored image is routed `flagged` or `cleared` only when it passes the image-"
        "quality limits and the domain check; otherwise `manual_review` with a `route_reason`"
        " (`model/gate.py`). Fitted by `leukoscreen fit-gate` (`model/fit_gate.py`).",
        "",
        "**Quality limits**, fitted on the training split (0.1st/99.9th percentile widened by "
        "10% of the 1-99% range, by at least 0.02 for shares of pixels, a low limit never "
        "below a tenth of its quantile; size is a policy: "
        "down to half the training resolution, at most 0.25 more oblong than the training "
        f"images). Stain hue band (8-bit HSV hue of stained pixels, 99% of the training "
        f"mass): {gate['hue_band'][0]}-{gate['hue_band'][1]}.",
        "",
        "| measure | low | high |",
        "|---|---|---|",
    ]
    for name, sides in gate["limits"].items():
        low, high = sides.get("low"), sides.get("high")
        lines.append(
            f"| {name} | {'' if low is None else f'{low:.4g}'} | "
            f"{'' if high is None else f'{high:.4g}'} |"
        )
    t, v = ev["test"], ev["val"]
    lines += [
        "",
        f"**Domain check**: {gate['features']}. Threshold {gate['domain_threshold']:.1f}, the "
        f"{gate['domain_quantile']:.0%} quantile of validation distances.",
        "",
        f"**Calibration**: {cal['method']}: a = {cal['a']:.4f}, b = {cal['b']:.4f}. Expected "
        f"calibration error (10 bins) on test {cal['ece_before']['test']:.4f} before, "
        f"{cal['ece_after']['test']:.4f} after (validation {cal['ece_before']['val']:.4f} -> "
        f"{cal['ece_after']['val']:.4f}); reliability diagram: "
        "`docs/model-card/lenet_lld-gate/reliability.png`. The operating threshold "
        f"({card['threshold']:.4f}) was chosen after calibration by the sensitivity rule.",
        "",
        "| split | images | to manual review | judged | sensitivity among judged | "
        "specificity among judged | reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in (("validation", v), ("test", t)):
        lines.append(
            f"| {name} | {e['n']} | {_pct(e['manual_review'])} | {e['judged']} | "
            f"{_opt(e['sensitivity'])} | {_opt(e['specificity'])} | {e['reasons']} |"
        )
    orientations = ev.get("orientations")
    if orientations:
        fitted = gate.get("orientations", {}).get("views", ["as taken"])
        fitted_on = (
            "the training images as the camera took them"
            if len(fitted) == 1
            else f"the training images in all {len(fitted)} views, one class mean per view"
        )
        lines += [
            "",
            "**Turned and mirrored fields**: the test images in each of the eight views of a "
            "square, through the workers' decode, measures and route. The domain statistics "
            f"were fitted on {fitted_on}.",
            "",
            "| view | to manual review | sensitivity among judged | specificity among judged |",
            "|---|---|---|---|",
        ]
        for view, e in orientations.items():
            lines.append(
                f"| {view} | {_pct(e['manual_review'])} | {_opt(e['sensitivity'])} | "
                f"{_opt(e['specificity'])} |"
            )
    lines += [
        "",
        "**Made-up and other-laboratory sets** (`model/corruptions.py`), share sent to manual "
        "review. *Tuning* sets were made from validation images and the even-numbered "
        "other-laboratory files and were looked at while designing the gate; *held-out* sets "
        "from test images and the odd-numbered files were not tuned on. `positives cleared` "
        "counts leukemic images the gate let through and the model cleared.",
        "",
        "| set | tuning | held-out | held-out reasons | held-out positives cleared |",
        "|---|---|---|---|---|",
    ]
    for kind, held in ev["held_out"].items():
        tune = ev["tuning"].get(kind, {})
        lines.append(
            f"| {kind} | {_pct(tune.get('manual_review'))} | {_pct(held['manual_review'])} | "
            f"{held['reasons']} | {held.get('positives_cleared', 'n/a')} |"
        )
    lines += [
        "",
        "Other-laboratory images: BCCD Dataset (Shenggan/BCCD_Dataset, MIT licence, "
        "copyright (c) 2017 shenggan), native 640x480 and centre-cropped to 224x224.",
        "",
    ]
    return lines


def precision_section(card: CardData) -> list[str]:
    """What bfloat16 workers change (``model.precision_check.record``), set by set."""
    check = card.get("precision_check", {}).get("bfloat16")
    if not check:
        return []
    lines = [
        "## bfloat16 workers",
        "",
        "On a CPU with native bfloat16, workers run the convolutions after the first in "
        "bfloat16 (`LEUKOSCREEN_PRECISION=auto`) only because this check found no route "
        "changed to *cleared*; their results carry a model version of their own. Each set "
        "scored and routed in float32 and in bfloat16: "
        f"**{check['changed_to_cleared']} routes changed to cleared** in all.",
        "",
        "| set | images | routes changed | largest change of p_leukemia | largest relative "
        "change of the domain distance |",
        "|---|---|---|---|---|",
    ]
    for name, s in check["sets"].items():
        changed = ", ".join(f"{k}: {v}" for k, v in s["routes_changed"].items()) or "none"
        lines.append(
            f"| {name} | {s['n']} | {changed} | {s['max_dp']:.4f} | {s['max_rel_distance']:.1%} |"
        )
    return [*lines, ""]


def _opt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.card_markdown", description=__doc__)
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--append", type=Path, help="hand-written Markdown appended at the end")
    args = parser.parse_args(argv)
    text = render(args.weights)
    if args.append:
        text += "\n" + args.append.read_text()
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
