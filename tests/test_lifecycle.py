"""The image lifecycle has one owner: only ``db/lifecycle.py`` changes an image's or a batch's
state (a newcomer looking for who moves an image from ``scoring`` to ``failed`` finds one file).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

OWNER = Path("db/lifecycle.py")
# Tests seed rows in any state and migrations rewrite tables: neither is the running service.
SOURCE_DIRS = ("api", "worker", "db", "model", "leukoscreen", "bench")
STATEFUL = {"Image", "Batch"}


def state_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines that set a ``state``: ``update(Image|Batch)``, ``.values(state=...)``,
    ``Image(..., state=...)`` / ``Batch(..., state=...)`` and ``x.state = ...``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if name == "update" and any(
                isinstance(a, ast.Name) and a.id in STATEFUL for a in node.args
            ):
                found.append((node.lineno, f"update({ast.unparse(node.args[0])})"))
            if (name in STATEFUL or attr == "values") and any(
                k.arg == "state" for k in node.keywords
            ):
                found.append((node.lineno, f"{ast.unparse(node.func)}(state=...)"))
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "state":
                found.append((node.lineno, f"{ast.unparse(t)} = ..."))
    return found


def test_only_the_lifecycle_module_changes_states():
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative == OWNER:
                continue
            for line, what in state_writes(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{relative}:{line}: {what}")
    assert offenders == [], "state changes belong in db/lifecycle.py:\n" + "\n".join(offenders)


def test_the_check_sees_each_kind_of_state_write():
    # The guard above passes trivially if it recognises nothing: prove it catches each form.
    code = """
session.execute(update(Image).where(Image.id == 1).values(error="x"))
session.execute(update(Batch).values(done=True))
stmt.values(state="failed")
Image(batch=b, state="queued")
batch.state = "scoring"
"""
    assert sorted(line for line, _ in state_writes(ast.parse(code))) == [2, 3, 4, 5, 6]


def test_the_owner_itself_is_seen_writing_states():
    # If the lifecycle module moved or the walk broke, this would be the first to say so.
    assert state_writes(ast.parse((REPO / OWNER).read_text()))
