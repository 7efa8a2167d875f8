"""The shipped model re-evaluated on the shared data matches its model card.

Skipped where ``<repo>/../shared/data/taleqani-all`` or the shipped weights are absent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "taleqani-all"
WEIGHTS = REPO / "model" / "weights" / "lenet_lld.keras"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} absent"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} absent"),
]


def test_shipped_card_matches_fresh_evaluation(tmp_path):
    from model import evaluate
    from model.card import file_sha256
    from model.gate import model_version, read_gate

    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    # The card's version covers the weights, the threshold and the gate's statistics.
    assert card["sha256"] == model_version(file_sha256(WEIGHTS), card, read_gate(WEIGHTS, card))
    assert WEIGHTS.stat().st_size < 40 * 1024 * 1024
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        ["--model", str(WEIGHTS), "--data", str(DATA), "--out", str(tmp_path), "--no-plots"]
    )
    assert evaluate.run(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    claimed = card["metrics"]
    assert report["data"]["split"] == "test"
    assert report["n"] == claimed["n"] and report["threshold"] == card["threshold"]
    assert report["confusion"] == claimed["confusion"]
    for key in ("auc", "sensitivity", "specificity", "f1", "accuracy"):
        assert report[key] == pytest.approx(claimed[key], abs=1e-4), key
    # routes: the same images go to manual review as when the gate was fitted
    gated = card["gate_evaluation"]["test"]
    assert report["routes"]["routes"] == gated["routes"]
    assert report["routes"]["sensitivity"] == pytest.approx(gated["sensitivity"], abs=1e-9)
    assert report["routes"]["manual_review"] <= 0.02
    # the network must clearly beat the colour-only shortcut on the same images:
    # at most half the baseline's ranking errors (1 - AUC)
    assert 1 - report["auc"] < 0.5 * (1 - report["colour_baseline"]["auc"])
    # generation 2: the subtype figures of the card are what the workers' code computes
    if "subtype_metrics" in card:
        claimed_subtype = card["subtype_metrics"]["test"]
        assert report["subtype"]["confusion"] == claimed_subtype["confusion"]
        assert report["subtype"]["accuracy"] == pytest.approx(claimed_subtype["accuracy"])
