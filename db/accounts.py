"""Users and API tokens: creation, password checks and token lookup, shared by the API and CLI."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import func, select, true, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from db import tenancy
from db.audit import Actor, record_event
from db.errors import Conflict, Invalid
from db.models import ApiToken, AuditEvent, Laboratory, Role, User
from db.tenancy import Scope

MIN_PASSWORD_LENGTH = 8
ROLES = tuple(r.value for r in Role)


class AccountError(Invalid):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def has_users(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def list_users(session: Session, scope: Scope) -> list[User]:
    stmt = select(User).where(tenancy.accounts_visible(scope)).order_by(User.name)
    return list(session.scalars(stmt))


def list_tokens(session: Session, scope: Scope, limit: int | None = None) -> list[ApiToken]:
    """Newest first."""
    stmt = select(ApiToken).join(User, User.id == ApiToken.user_id)
    stmt = stmt.where(tenancy.accounts_visible(scope))
    return list(session.scalars(stmt.order_by(ApiToken.id.desc()).limit(limit)))


def audit_events(
    session: Session, scope: Scope, before_id: int = 0, limit: int = 200
) -> list[AuditEvent]:
    """Newest first; ``before_id`` pages back through older events."""
    stmt = (
        select(AuditEvent)
        .where(tenancy.audit_filter(scope))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    if before_id:
        stmt = stmt.where(AuditEvent.id < before_id)
    return list(session.scalars(stmt))


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def _is_active_admin(role: str, active: bool) -> bool:
    return active and role == Role.ADMIN.value


def _refuse_losing_the_last_admin(session: Session, user: User, only_global: bool) -> None:
    others = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.active.is_(True), User.id != user.id)
        .where(User.global_admin.is_(True) if only_global else true())
    )
    if not others:
        kind = "global admin" if only_global else "admin"
        raise Conflict(f"{user.name} is the last active {kind}; make another {kind} first")


def _check_global(role: str, global_admin: bool, scope: Scope | None) -> None:
    if not global_admin:
        return
    if role != Role.ADMIN.value:
        raise AccountError("only an admin can be a global admin")
    if scope is not None and not scope.is_global:
        raise AccountError("only a global admin can make a global admin")


def create_laboratory(session: Session, name: str, actor: Actor | None) -> Laboratory:
    name = name.strip()
    if not name or len(name) > 255:
        raise AccountError("a laboratory name is 1 to 255 characters")
    if session.scalar(select(Laboratory).where(Laboratory.name == name)) is not None:
        raise AccountError(f"laboratory {name!r} already exists")
    lab = Laboratory(name=name)
    session.add(lab)
    session.flush()
    record_event(
        session, actor, "laboratory.create", f"laboratory:{lab.id}", laboratory_id=lab.id, name=name
    )
    return lab


def find_laboratory(session: Session, name: str) -> Laboratory | None:
    return session.scalar(select(Laboratory).where(Laboratory.name == name))


def create_user(
    session: Session,
    name: str,
    role: str,
    password: str,
    actor: Actor | None = None,
    *,
    scope: Scope | None = None,
    laboratory_id: int | None = None,
    global_admin: bool = False,
) -> User:
    """A new account in ``laboratory_id`` (default: the creator's home laboratory, or the
    default laboratory for an operator at the command line, whose ``scope`` is None).

    A lab admin creates accounts only in their laboratories, and only a global admin (or
    the operator) makes global admins.
    """
    name = name.strip()
    if not name or len(name) > 255:
        raise AccountError("a user name is 1 to 255 characters")
    _check_role(role)
    _check_password(password)
    _check_global(role, global_admin, scope)
    if laboratory_id is None:
        laboratory_id = scope.home if scope else tenancy.default_laboratory(session).id
    elif scope is not None:
        tenancy.laboratory_or_404(session, scope, laboratory_id)
    elif session.get(Laboratory, laboratory_id) is None:
        raise AccountError(f"no laboratory {laboratory_id}")
    if find_user(session, name) is not None:
        raise AccountError(f"user {name!r} already exists")
    user = User(
        name=name,
        role=role,
        password_hash=generate_password_hash(password),
        active=True,
        laboratory_id=laboratory_id,
        global_admin=global_admin,
    )
    session.add(user)
    session.flush()
    record_event(
        session,
        actor,
        "user.create",
        f"user:{user.id}",
        laboratory_id=laboratory_id,
        name=name,
        role=role,
        global_admin=global_admin,
    )
    return user


def update_user(
    session: Session,
    user: User,
    actor: Actor | None,
    role: str | None = None,
    active: bool | None = None,
    password: str | None = None,
    *,
    scope: Scope | None = None,
    laboratories: list[int] | None = None,
) -> User:
    """Change role, active flag, password or granted laboratories; the JSON API and the admin
    page both call this.

    Nobody deactivates or changes the role of their own account (an admin would lock
    themselves out), the last active admin stays an active admin and the last active global
    admin a global admin. Only a global admin (or the operator, ``scope`` None) grants
    laboratories.
    """
    new_role = user.role if role is None else role
    new_active = user.active if active is None else active
    _check_role(new_role)
    if password is not None:
        _check_password(password)
    if actor is not None and actor.id == user.id:
        if not new_active:
            raise AccountError("you cannot deactivate your own account")
        if new_role != user.role:
            raise AccountError("you cannot change the role of your own account")
    if _is_active_admin(user.role, user.active) and not _is_active_admin(new_role, new_active):
        _refuse_losing_the_last_admin(session, user, only_global=False)
        if user.global_admin:
            _refuse_losing_the_last_admin(session, user, only_global=True)
    changes: dict[str, object] = {}
    if laboratories is not None:
        if scope is not None and not scope.is_global:
            raise AccountError("only a global admin grants laboratories")
        for lab_id in laboratories:
            if session.get(Laboratory, lab_id) is None:
                raise AccountError(f"no laboratory {lab_id}")
        before = tenancy.granted(session, user.id)
        after = tenancy.grant(session, user, laboratories)
        if before != after:
            # No need to end sessions: every request reads its scope afresh.
            changes["laboratories"] = {"from": before, "to": after}
    if new_role != user.role:
        changes["role"] = {"from": user.role, "to": new_role}
        user.role = new_role
        if new_role != Role.ADMIN.value:
            user.global_admin = False
    if new_active != user.active:
        changes["active"] = {"from": user.active, "to": new_active}
        user.active = new_active
    if password is not None:
        user.password_hash = generate_password_hash(password)
        user.session_version += 1  # whoever knew the old password is signed out
        changes["password"] = "changed"
    if changes:
        record_event(
            session,
            actor,
            "user.update",
            f"user:{user.id}",
            laboratory_id=user.laboratory_id,
            name=user.name,
            **changes,
        )
    return user


def end_sessions(session: Session, user_id: int) -> None:
    """Invalidate every session cookie issued to the user so far (all browsers)."""
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(session_version=User.session_version + 1)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def _decoy_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


def check_password(session: Session, name: str, password: str) -> User | None:
    user = find_user(session, name)
    # The guess is hashed for unknown and inactive users too: answering them sooner than a
    # real user would tell a guesser which names exist (112 ms against 8 ms before).
    stored = user.password_hash if user is not None else _decoy_hash()
    matches = check_password_hash(stored, password)
    if user is None or not user.active or not matches:
        return None
    return user


def create_token(
    session: Session, user: User, actor: Actor | None, label: str = ""
) -> tuple[ApiToken, str]:
    """Returns the row and the token itself, which is shown once and never stored."""
    token = secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        token_sha256=hash_token(token),
        prefix=token[:8],
        label=label[:255],
        created_by_id=actor.id if actor else None,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        actor,
        "token.create",
        f"token:{row.id}",
        laboratory_id=user.laboratory_id,
        user=user.name,
        label=row.label,
    )
    return row, token


def revoke_token(session: Session, token: ApiToken, actor: Actor | None) -> None:
    if token.revoked_at is not None:
        return
    token.revoked_at = datetime.now(UTC)
    record_event(
        session,
        actor,
        "token.revoke",
        f"token:{token.id}",
        laboratory_id=token.user.laboratory_id,
        user=token.user.name,
    )


def user_for_token(session: Session, token: str) -> User | None:
    user = session.scalar(
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    return user if user is not None and user.active else None
