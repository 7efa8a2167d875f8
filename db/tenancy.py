"""Laboratories kept apart: the one place that says which laboratories a principal may see.

Every query that reads laboratory data (batches, and through them images, results, reviews
and exports; users, tokens and audit rows) is filtered here by a ``Scope``. An object of
another laboratory is answered exactly like one that does not exist (``NotFound``, 404), so
ids cannot be probed. Functions of ``db/`` that take a batch id read a batch that a view
found through ``batch_or_404``; those that take an image id, one found through
``image_or_404``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.errors import NotFound
from db.models import (
    ApiToken,
    AuditEvent,
    Batch,
    Image,
    Laboratory,
    LaboratoryGrant,
    Role,
    User,
    Webhook,
    WebhookDelivery,
)

DEFAULT_LAB = "default"  # the laboratory migration 0008 creates and files old data in
# Its id: 0008 inserts it first into an empty table, so it is 1 on every database.
DEFAULT_LAB_ID = 1

S = TypeVar("S", bound=Select)


@dataclass(frozen=True)
class Scope:
    """What one principal may see, and where what they create goes."""

    home: int  # the laboratory their batches and the accounts they create belong to
    labs: frozenset[int] | None  # None: every laboratory (a global admin)

    @property
    def is_global(self) -> bool:
        return self.labs is None

    def sees(self, laboratory_id: int | None) -> bool:
        if self.labs is None:
            return True
        return laboratory_id is not None and laboratory_id in self.labs


def narrowed(scope: Scope, laboratory_id: int | None, what: str, ident: object) -> Scope:
    """``scope`` limited to one of its laboratories (None: unchanged), for ids that name one
    thing per laboratory (specimen ids): whoever sees several says whose they mean. A
    laboratory outside the scope is answered as the thing not existing."""
    if laboratory_id is None:
        return scope
    if not scope.sees(laboratory_id):
        raise NotFound(f"no {what} {ident}")
    return Scope(home=scope.home, labs=frozenset({laboratory_id}))


def scope_of(session: Session, user: User) -> Scope:
    """A user's scope: a global admin sees everything; anyone else their home laboratory and
    the laboratories granted to them."""
    if user.global_admin and user.role == Role.ADMIN.value:
        return Scope(home=user.laboratory_id, labs=None)
    granted = session.scalars(
        select(LaboratoryGrant.laboratory_id).where(LaboratoryGrant.user_id == user.id)
    )
    return Scope(home=user.laboratory_id, labs=frozenset({user.laboratory_id, *granted}))


def visible(scope: Scope, column: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
    """The condition that keeps rows of laboratories outside the scope out of a query."""
    if scope.labs is None:
        return true()
    return column.in_(sorted(scope.labs))


def scoped(stmt: S, scope: Scope, column: InstrumentedAttribute[Any] | None = None) -> S:
    """``stmt`` limited to the scope; ``column`` defaults to the batch's laboratory, so the
    statement must select from or join ``batch``."""
    return stmt.where(visible(scope, column if column is not None else Batch.laboratory_id))


def accounts_visible(scope: Scope) -> ColumnElement[bool]:
    """Accounts the scope's admin may see and manage: those of its laboratories, except that
    only a global admin sees a global admin (a lab admin resetting a global admin's password
    or minting a token for one would gain every laboratory), and only an admin who sees every
    laboratory granted to an account sees that account (for the same reason, per laboratory)."""
    if scope.labs is None:
        return true()
    granted_elsewhere = (
        select(LaboratoryGrant.user_id)
        .where(
            LaboratoryGrant.user_id == User.id,
            LaboratoryGrant.laboratory_id.not_in(sorted(scope.labs)),
        )
        .exists()
    )
    return and_(
        visible(scope, User.laboratory_id), User.global_admin.is_(False), ~granted_elsewhere
    )


def _one_or_404(session: Session, stmt: Select[Any], what: str, ident: object) -> Any:
    row = session.scalar(stmt)
    if row is None:
        # The same words as for an id that does not exist: nothing tells them apart.
        raise NotFound(f"no {what} {ident}")
    return row


def batch_or_404(session: Session, scope: Scope, batch_id: str) -> Batch:
    stmt = scoped(select(Batch).where(Batch.id == batch_id), scope)
    batch: Batch = _one_or_404(session, stmt, "batch", batch_id)
    return batch


def image_or_404(session: Session, scope: Scope, image_id: int) -> Image:
    stmt = scoped(
        select(Image).join(Batch, Batch.id == Image.batch_id).where(Image.id == image_id), scope
    )
    image: Image = _one_or_404(session, stmt, "image", image_id)
    return image


def user_or_404(session: Session, scope: Scope, user_id: int) -> User:
    stmt = select(User).where(User.id == user_id, accounts_visible(scope))
    user: User = _one_or_404(session, stmt, "user", user_id)
    return user


def token_or_404(session: Session, scope: Scope, token_id: int) -> ApiToken:
    stmt = (
        select(ApiToken)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == token_id, accounts_visible(scope))
    )
    token: ApiToken = _one_or_404(session, stmt, "token", token_id)
    return token


def webhook_or_404(session: Session, scope: Scope, webhook_id: int) -> Webhook:
    stmt = scoped(select(Webhook).where(Webhook.id == webhook_id), scope, Webhook.laboratory_id)
    webhook: Webhook = _one_or_404(session, stmt, "webhook", webhook_id)
    return webhook


def delivery_or_404(session: Session, scope: Scope, delivery_id: str) -> WebhookDelivery:
    stmt = scoped(
        select(WebhookDelivery)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == delivery_id),
        scope,
        Webhook.laboratory_id,
    )
    delivery: WebhookDelivery = _one_or_404(session, stmt, "delivery", delivery_id)
    return delivery


def laboratory_or_404(session: Session, scope: Scope, laboratory_id: int) -> Laboratory:
    stmt = scoped(select(Laboratory).where(Laboratory.id == laboratory_id), scope, Laboratory.id)
    lab: Laboratory = _one_or_404(session, stmt, "laboratory", laboratory_id)
    return lab


def laboratories(session: Session, scope: Scope) -> list[Laboratory]:
    stmt = scoped(select(Laboratory), scope, Laboratory.id).order_by(Laboratory.name)
    return list(session.scalars(stmt))


def audit_filter(scope: Scope) -> ColumnElement[bool]:
    """Audit rows of the scope's laboratories; system-wide rows (no laboratory) are for
    global admins only."""
    return visible(scope, AuditEvent.laboratory_id)


def default_laboratory(session: Session) -> Laboratory:
    """The laboratory a fresh install's first accounts go to (migration 0008 creates it)."""
    lab = session.scalar(select(Laboratory).where(Laboratory.name == DEFAULT_LAB))
    if lab is None:
        lab = Laboratory(name=DEFAULT_LAB)
        session.add(lab)
        session.flush()
    return lab


def grant(session: Session, user: User, laboratory_ids: Iterable[int]) -> list[int]:
    """Set the further laboratories ``user`` works for; returns the ids now granted."""
    wanted = set(laboratory_ids) - {user.laboratory_id}
    current = set(
        session.scalars(
            select(LaboratoryGrant.laboratory_id).where(LaboratoryGrant.user_id == user.id)
        )
    )
    for lab_id in current - wanted:
        session.delete(session.get(LaboratoryGrant, (user.id, lab_id)))
    for lab_id in wanted - current:
        session.add(LaboratoryGrant(user_id=user.id, laboratory_id=lab_id))
    session.flush()
    return sorted(wanted)


def granted(session: Session, user_id: int) -> list[int]:
    return sorted(
        session.scalars(
            select(LaboratoryGrant.laboratory_id).where(LaboratoryGrant.user_id == user_id)
        )
    )
