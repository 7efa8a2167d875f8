"""The audit trail of uploads, accounts and tokens: rows are inserted, never changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

from db.models import AuditEvent, Review, SpecimenSignoff


class Actor(Protocol):
    """Who did it: a User row, the signed-in user of a web request, or an operator's shell."""

    @property
    def id(self) -> int | None: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Operator:
    """Someone at the server's command line: no account, but the audit names the OS user."""

    name: str
    id: int | None = None


class AppendOnlyError(RuntimeError):
    pass


def record_event(
    session: Session, actor: Actor | None, action: str, target: str = "", **details: Any
) -> AuditEvent:
    row = AuditEvent(
        actor_id=actor.id if actor else None,
        actor_name=actor.name if actor else "system",
        action=action,
        target=target[:255],
        details=details,
    )
    session.add(row)
    return row


@event.listens_for(Session, "before_flush")
def _refuse_changes_to_history(session: Session, _context: Any, _instances: Any) -> None:
    # The database triggers refuse these too; failing here gives a clear error before SQL runs.
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, Review | AuditEvent | SpecimenSignoff) and (
            obj in session.deleted or session.is_modified(obj)
        ):
            raise AppendOnlyError(f"{type(obj).__name__} rows are append-only")
