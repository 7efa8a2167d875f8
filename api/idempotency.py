"""``Idempotency-Key`` on uploads: a retried request gets the first answer, not a second batch.

A client that lost the answer to an upload (the connection broke, the API was killed after
its commit) cannot know whether the batch was recorded. Sent again with the same key, the
request is answered with the stored first answer and records nothing. Keys are per user and
kept for ``TTL``; the row is written in the same transaction as the batch and its images.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from flask import request
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from api import context
from api.auth import actor
from api.errors import ApiError
from db.models import IdempotencyKey

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
TTL = timedelta(hours=24)


def request_key() -> str | None:
    """The request's key, or None; 400 for a key no client should send."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise ApiError(400, f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable characters")
    return key


def fingerprint(uploads: list[tuple[str, BinaryIO]]) -> str:
    """What a request sent, cheaply: each file's name and size, in order."""
    digest = hashlib.sha256()
    for name, stream in uploads:
        stream.seek(0, os.SEEK_END)
        digest.update(f"{name}\0{stream.tell()}\0".encode())
        stream.seek(0)
    return digest.hexdigest()[:32]


def _target(fingerprint: str) -> str:
    return f"{fingerprint} {request.method} {request.path}"[:255]


def first_answer(key: str, fingerprint: str) -> dict[str, Any] | None:
    """The stored answer of the first request with this key, if it is still kept.

    ``fingerprint`` summarises what was sent (file names and sizes): a key sent again with
    other files or to another URL is a client's mistake, answered 409, not a replay.
    """
    with context.sessions()() as session:
        row = session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.user_id == actor().id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at >= datetime.now(UTC) - TTL,
            )
        )
    if row is None:
        return None
    if row.request != _target(fingerprint):
        raise ApiError(
            409,
            f"this {HEADER} was already used for a different request (other files or another "
            "URL): use a new key",
        )
    return dict(row.body)


def remember(session: Session, key: str, fingerprint: str, body: dict[str, Any]) -> int:
    """Store the answer with the request's own transaction; returns the row id.

    A copy of the request racing this one fails here (unique user and key) and rolls back.
    """
    user_id = actor().id
    # The user's expired keys go first, so a key may be used again after the TTL.
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.created_at < datetime.now(UTC) - TTL,
        )
    )
    row = IdempotencyKey(
        user_id=user_id, key=key, request=_target(fingerprint), status=202, body=body
    )
    session.add(row)
    session.flush()
    return row.id


def complete(row_id: int, body: dict[str, Any]) -> None:
    """Replace the stored answer by the final one (what was enqueued is known after commit)."""
    with context.sessions().begin() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.id == row_id).values(body=body))
