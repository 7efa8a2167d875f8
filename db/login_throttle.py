"""Throttling of password guessing: failed sign-ins counted per account and address, and per
address across accounts.

A user name is throttled only together with the address the guesses come from: after
``max_failures`` failures from one address, that address waits before its next guess on that
name, twice as long after every further failure (up to the window). Guesses from elsewhere
never lock the account itself, so nobody can lock an administrator (or every administrator)
out by guessing wrong on purpose. An address that guesses at many names is locked for the
window after ``CLIENT_FACTOR * max_failures`` failures.

Counts live in the ``login_failure`` table so that all gunicorn workers (and hosts) share
them. A check and the following insert are not one atomic step, so a burst of parallel
guesses can overshoot the limit by the number of concurrent requests; the lock-out still
follows on the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from db.audit import record_event
from db.models import LoginFailure, utcnow

# The first wait once an account is locked for an address; each further failure doubles it.
FIRST_DELAY_S = 60
# How many more failures an address may make across every name than on one name.
CLIENT_FACTOR = 4


@dataclass(frozen=True)
class Lockout:
    scope: str  # "user" (this name from this address) or "client" (this address)
    retry_after_s: int


def _key(name: str) -> str:
    return name.strip()[:255]


def _aware(moment: datetime, now: datetime) -> datetime:
    # SQLite through a raw aggregate returns naive UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=now.tzinfo)


def _failures(
    session: Session, since: datetime, *where: ColumnElement[bool]
) -> tuple[int, datetime | None, datetime | None]:
    count, oldest, newest = session.execute(
        select(
            func.count(), func.min(LoginFailure.created_at), func.max(LoginFailure.created_at)
        ).where(LoginFailure.created_at > since, *where)
    ).one()
    return int(count), oldest, newest


def _wait(until: datetime, now: datetime) -> int:
    return max(1, int((until - now).total_seconds()) + 1)


def lockout(
    session: Session, name: str, client_ip: str, max_failures: int, window_s: int
) -> Lockout | None:
    """The lock-out in force for this user name from this address, or for the address."""
    if max_failures <= 0:
        return None
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    count, _, newest = _failures(
        session, since, LoginFailure.user_name == _key(name), LoginFailure.client_ip == client_ip
    )
    if count >= max_failures and newest is not None:
        delay = min(window_s, FIRST_DELAY_S * 2 ** (count - max_failures))
        until = _aware(newest, now) + timedelta(seconds=delay)
        if until > now:
            return Lockout(scope="user", retry_after_s=_wait(until, now))
    count, oldest, _ = _failures(session, since, LoginFailure.client_ip == client_ip)
    if count >= CLIENT_FACTOR * max_failures and oldest is not None:
        # Unlocked once enough of the counted failures have left the window.
        until = _aware(oldest, now) + timedelta(seconds=window_s)
        return Lockout(scope="client", retry_after_s=_wait(until, now))
    return None


def record_failure(
    session: Session,
    name: str,
    client_ip: str,
    max_failures: int,
    window_s: int,
    laboratory_id: int | None = None,
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
            laboratory_id=laboratory_id,
            name=_key(name),
            client_ip=client_ip,
            retry_after_s=locked.retry_after_s,
            window_s=window_s,
        )
    return locked


def clear_failures(session: Session, name: str, client_ip: str) -> None:
    """A successful sign-in forgets that name's failures from that address, and nothing else:
    the right password from one place does not wipe the trail of guesses from another."""
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.user_name == _key(name), LoginFailure.client_ip == client_ip
        )
    )
