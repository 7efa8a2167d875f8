"""Users and API tokens: creation, password checks and token lookup, shared by the API and CLI."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from db.audit import Actor, record_event
from db.models import ApiToken, Role, User

MIN_PASSWORD_LENGTH = 8


class AccountError(ValueError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def has_users(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def create_user(
    session: Session, name: str, role: str, password: str, actor: Actor | None = None
) -> User:
    name = name.strip()
    if not name or len(name) > 255:
        raise AccountError("a user name is 1 to 255 characters")
    if role not in {r.value for r in Role}:
        raise AccountError(f"role must be one of {', '.join(r.value for r in Role)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if find_user(session, name) is not None:
        raise AccountError(f"user {name!r} already exists")
    user = User(name=name, role=role, password_hash=generate_password_hash(password), active=True)
    session.add(user)
    session.flush()
    record_event(session, actor, "user.create", f"user:{user.id}", name=name, role=role)
    return user


def update_user(
    session: Session,
    user: User,
    actor: Actor | None,
    role: str | None = None,
    active: bool | None = None,
    password: str | None = None,
) -> User:
    changes: dict[str, object] = {}
    if role is not None and role != user.role:
        if role not in {r.value for r in Role}:
            raise AccountError(f"role must be one of {', '.join(r.value for r in Role)}")
        changes["role"] = {"from": user.role, "to": role}
        user.role = role
    if active is not None and active != user.active:
        changes["active"] = {"from": user.active, "to": active}
        user.active = active
    if password is not None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
        user.password_hash = generate_password_hash(password)
        user.session_version += 1  # whoever knew the old password is signed out
        changes["password"] = "changed"
    if changes:
        record_event(session, actor, "user.update", f"user:{user.id}", name=user.name, **changes)
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
    record_event(session, actor, "token.create", f"token:{row.id}", user=user.name, label=row.label)
    return row, token


def revoke_token(session: Session, token: ApiToken, actor: Actor | None) -> None:
    if token.revoked_at is not None:
        return
    token.revoked_at = datetime.now(UTC)
    record_event(session, actor, "token.revoke", f"token:{token.id}", user=token.user.name)


def user_for_token(session: Session, token: str) -> User | None:
    user = session.scalar(
        select(User)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    return user if user is not None and user.active else None
