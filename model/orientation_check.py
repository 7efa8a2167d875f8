"""How the gate routes a model's test images turned and mirrored, for a card fitted before
``leukoscreen fit-gate`` measured it (fit-gate records the same figures for every new fit).

    python -m model.orientation_check --data ../shared/data/taleqani-all [--write]

Routes the test split in each of the eight views of a square (``model.fit_gate.VIEWS``)
through the workers' decode, quality measures, network, calibration and domain check, and
prints, per view, the share sent to a person and sensitivity and specificity among the images
the model judges. ``--write`` records them in the card's ``gate_evaluation.orientations``; the
gate's statistics, threshold and model version are left as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model import data as mdata
from model.card import read_card_data, write_card
from model.fit_gate import CAMERA, ORIENTATIONS, Network, evaluate_orientations
from model.gate import read_gate
from model.preprocess import prepare


def run(args: argparse.Namespace) -> int:
    card = read_card_data(args.model)
    gate = read_gate(args.model, card)
    if card is None or gate is None:
        raise SystemExit(f"{args.model} has no fitted gate: run leukoscreen fit-gate")
    net = Network(args.model, args.batch_size)
    rows = mdata.read_split(mdata.split_path(args.model))["splits"]["test"]
    prepared = [
        prepare((args.data / r["file"]).read_bytes(), gate.hue_band, net.input_size) for r in rows
    ]
    labels = np.array([r["label"] for r in rows])
    figures = evaluate_orientations(net, gate, card["threshold"], prepared, labels, gate.hue_band)
    if args.write:
        card.setdefault("gate_evaluation", {})["orientations"] = figures
        # A card fitted before fit-gate said so was fitted on the camera's orientation.
        card["gate"].setdefault(
            "orientations", {"name": CAMERA, "views": list(ORIENTATIONS[CAMERA])}
        )
        write_card(args.model, card)
        print(f"written to the card of {args.model.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.orientation_check", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("model/weights/lenet_lld.keras"))
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--write", action="store_true", help="record the figures in the card")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
