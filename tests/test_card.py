"""The model card (``X.json``) has one definition, ``model/card.py``, that every writer and
reader goes through, and its format stays the shipped cards' format."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from model.card import CardData, card_path, read_card, read_card_data, write_card
from tests.conftest import REPO

SHIPPED = sorted((REPO / "model" / "weights").glob("*.keras"))
OWNER = Path("model/card.py")
SOURCE_DIRS = ("api", "worker", "db", "model", "leukoscreen", "bench", "tests", "scripts")


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_card_read_and_written_again_is_byte_for_byte_the_same(weights, tmp_path):
    copy = tmp_path / weights.name
    shutil.copy(weights, copy)
    card = read_card_data(weights)
    assert card is not None
    write_card(copy, card)
    assert card_path(copy).read_bytes() == card_path(weights).read_bytes()


def test_a_written_card_is_read_back(tmp_path):
    weights = tmp_path / "m.keras"
    card: CardData = {"name": "m", "threshold": 0.3, "output": "p_normal", "metrics": {"auc": 1}}
    write_card(weights, card)
    assert read_card_data(weights) == card
    got = read_card(weights)
    assert (got.name, got.threshold, got.output, got.metrics) == ("m", 0.3, "p_normal", {"auc": 1})


def test_weights_without_a_card_get_the_defaults(tmp_path):
    assert read_card_data(tmp_path / "m.keras") is None
    assert read_card(tmp_path / "m.keras").threshold == 0.5


def card_file_access(tree: ast.AST) -> list[int]:
    """Lines that read or write ``card_path(...)`` themselves (``.read_text()``,
    ``.write_text()``, ``.open()``, ``open(card_path(...))``) instead of going through
    ``read_card_data`` / ``write_card``."""

    def is_card_path(node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "card_path"
        )

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and is_card_path(func.value)
            and func.attr in {"read_text", "write_text", "read_bytes", "write_bytes", "open"}
        ):
            found.append(node.lineno)
        if isinstance(func, ast.Name) and func.id == "open" and node.args:
            found.extend([node.lineno] if is_card_path(node.args[0]) else [])
    return sorted(found)


def test_only_the_card_module_reads_and_writes_card_files():
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative in (OWNER, Path("tests/test_card.py")):
                continue
            for line in card_file_access(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{relative}:{line}")
    assert offenders == [], "use model.card.read_card_data / write_card:\n" + "\n".join(offenders)


def test_the_check_sees_each_kind_of_card_file_access():
    code = """
json.loads(card_path(w).read_text())
card_path(w).write_text(json.dumps(card))
with open(card_path(w)) as fh: pass
print(card_path(w).name)
"""
    assert card_file_access(ast.parse(code)) == [2, 3, 4]
