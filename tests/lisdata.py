"""Signed specimens written straight into the database, for FHIR, webhook and retention tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import update

from db.accounts import create_user, find_user
from db.models import Image, Role
from db.reviews import record_decision
from db.session import engine_for, session_factory
from db.specimens import sign
from tests.conftest import PASSWORD
from tests.reviewdata import seed_scored


def signer(database_url: str, name: str = "dr-path"):  # type: ignore[no-untyped-def]
    with session_factory(engine_for(database_url)).begin() as session:
        user = find_user(session, name) or create_user(session, name, Role.REVIEWER.value, PASSWORD)
        session.flush()
        session.expunge(user)
    return user


def scored_specimen(
    database_url: str,
    specimen_id: str,
    scores: Sequence[float],
    storage_dir: Path | None = None,
    blobs: Sequence[bytes] | None = None,
) -> tuple[str, list[int]]:
    """A scored batch whose images are all fields of ``specimen_id``, flagged ones decided."""
    batch_id, image_ids = seed_scored(
        database_url, scores, name=specimen_id, storage_dir=storage_dir, blobs=blobs
    )
    reviewer = signer(database_url)
    with session_factory(engine_for(database_url)).begin() as session:
        session.execute(
            update(Image).where(Image.id.in_(image_ids)).values(specimen_id=specimen_id)
        )
        for image_id, p in zip(image_ids, scores, strict=True):
            if p >= 0.5:
                record_decision(session, image_id, "confirmed", reviewer)
    return batch_id, image_ids


def sign_specimen(
    database_url: str,
    specimen_id: str,
    interpretation: str = "leukemia_suspected",
    comment: str = "",
    amends_id: int | None = None,
) -> int:
    with session_factory(engine_for(database_url)).begin() as session:
        row = sign(session, specimen_id, interpretation, signer(database_url), comment, amends_id)
        session.flush()
        return row.id
