"""Throttling of password guessing: failed sign-ins counted per user name and per client.

Counts live in the ``login_failure`` table so that all gunicorn workers (and hosts) share
them. A check and the following insert are not one atomic step, so a burst of parallel
guesses can overshoot the limit by the number of concurrent requests; the lock-out still
follows on the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.audit import record_event
from db.models import LoginFailure, utcnow


@dataclass(frozen=True)
class Lockout:
    scope: str  # "user" or "client"
    retry_after_s: int


def _key(name: str) -> str:
    return name.strip()[:255]


def _oldest_in_window(
    session: Session, column: InstrumentedAttribute[str], value: str, since: datetime
) -> tuple[int, datetime | None]:
    count, oldest = session.execute(
        select(func.count(), func.min(LoginFailure.created_at)).where(
            column == value, LoginFailure.created_at > since
        )
    ).one()
    return int(count), oldest


def lockout(
    session: Session, name: str, client_ip: str, max_failures: int, window_s: int
) -> Lockout | None:
    """The lock-out in force for this user name or client address, if any."""
    if max_failures <= 0:
        return None
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    checks = (
        ("user", LoginFailure.user_name, _key(name)),
        ("client", LoginFailure.client_ip, client_ip),
    )
    for scope, column, value in checks:
        count, oldest = _oldest_in_window(session, column, value, since)
        if count >= max_failures and oldest is not None:
            if oldest.tzinfo is None:  # SQLite through a raw aggregate returns naive UTC
                oldest = oldest.replace(tzinfo=now.tzinfo)
            # Unlocked once enough of the counted failures have left the window.
            wait = (oldest + timedelta(seconds=window_s) - now).total_seconds()
            return Lockout(scope=scope, retry_after_s=max(1, int(wait) + 1))
    return None


def record_failure(
    session: Session, name: str, client_ip: str, max_failures: int, window_s: int
) -> Lockout | None:
    """Count a failed sign-in; returns the lock-out it starts (audited), if it starts one."""
    now = utcnow()
    # Rows that left the window count for nothing: prune them as we go.
    session.execute(
        delete(LoginFailure).where(LoginFailure.created_at <= now - timedelta(seconds=window_s))
    )
    session.add(LoginFailure(user_name=_key(name), client_ip=client_ip[:64], created_at=now))
    session.flush()
    locked = lockout(session, name, client_ip, max_failures, window_s)
    if locked is not None:
        record_event(
            session,
            None,
            "user.login_locked",
            f"{locked.scope}:{_key(name) if locked.scope == 'user' else client_ip}"[:255],
            name=_key(name),
            client_ip=client_ip,
            failures=max_failures,
            window_s=window_s,
        )
    return locked


def clear_failures(session: Session, name: str) -> None:
    """A successful sign-in forgets that user name's failures, and no one else's."""
    session.execute(delete(LoginFailure).where(LoginFailure.user_name == _key(name)))
