"""Scoring one chunk of images: claim in SQL, preprocess, one batched model call, store results.

Idempotent by construction: only images still ``queued``/``scoring`` are claimed, results are
inserted with ON CONFLICT DO NOTHING on (image, model version), and an image that already has
a result for this model is simply marked scored. A re-delivered or duplicated task is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageState, ModelVersion, Result
from db.progress import PENDING, mark_complete_batches
from leukoscreen.storage import ContentStore
from model.card import ModelCard
from model.gate import Gate, Route, route_image
from model.inference import Scores
from model.preprocess import Prepared, prepare

log = logging.getLogger(__name__)


class Scorer(Protocol):
    sha256: str
    card: ModelCard
    gate: Gate | None

    def assess(self, images: np.ndarray) -> Scores: ...


@dataclass
class ChunkOutcome:
    scored: int = 0
    failed: int = 0
    skipped: int = 0


def register_model_version(sessions: sessionmaker[Session], model: Scorer) -> int:
    """Get or create the ModelVersion row for these weights (safe when workers race)."""
    with sessions() as session:
        found = session.scalar(select(ModelVersion.id).where(ModelVersion.sha256 == model.sha256))
        if found is not None:
            return found
        version = ModelVersion(
            sha256=model.sha256,
            name=model.card.name,
            threshold=model.card.threshold,
            metrics=model.card.metrics,
            gate=model.gate.describe() if model.gate is not None else None,
        )
        session.add(version)
        try:
            session.commit()
            return version.id
        except IntegrityError:
            session.rollback()
            return session.scalar(
                select(ModelVersion.id).where(ModelVersion.sha256 == model.sha256)
            )  # type: ignore[return-value]


def _insert_ignoring_duplicates(session: Session, rows: list[dict]) -> None:
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(Result).on_conflict_do_nothing(
            index_elements=["image_id", "model_version_id"]
        )
    elif dialect == "sqlite":
        stmt = sqlite.insert(Result).on_conflict_do_nothing(
            index_elements=["image_id", "model_version_id"]
        )
    else:  # the unique constraint still guarantees one result; other databases just fail loudly
        stmt = insert(Result)
    session.execute(stmt, rows)


def claim(
    sessions: sessionmaker[Session], image_ids: Sequence[int], version_id: int, max_attempts: int
) -> list[tuple[int, str, str]]:
    """Move the chunk's pending images to ``scoring``; returns (id, storage key, batch id)."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        rows = session.execute(
            select(Image.id, Image.storage_key, Image.batch_id, Image.attempts).where(
                Image.id.in_(image_ids), Image.state.in_(PENDING)
            )
        ).all()
        if not rows:
            return []
        done = set(
            session.scalars(
                select(Result.image_id).where(
                    Result.image_id.in_([r.id for r in rows]),
                    Result.model_version_id == version_id,
                )
            )
        )
        claimed: list[Any] = []
        exhausted: list[Any] = []
        for r in rows:
            if r.id in done:
                continue
            (exhausted if r.attempts >= max_attempts else claimed).append(r)
        if done:
            session.execute(
                update(Image)
                .where(Image.id.in_(done))
                .values(state=ImageState.SCORED.value, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        if exhausted:
            session.execute(
                update(Image)
                .where(Image.id.in_([r.id for r in exhausted]))
                .values(
                    state=ImageState.FAILED.value,
                    updated_at=now,
                    error=f"gave up after {max_attempts} attempts (worker lost each time)",
                )
                .execution_options(synchronize_session=False)
            )
        if claimed:
            session.execute(
                update(Image)
                .where(Image.id.in_([r.id for r in claimed]))
                .values(state=ImageState.SCORING.value, attempts=Image.attempts + 1, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        if done or exhausted:
            mark_complete_batches(session, {r.batch_id for r in rows})
    return [(r.id, r.storage_key, r.batch_id) for r in claimed]


def _load(store: ContentStore, key: str | None, gate: Gate | None) -> Prepared:
    if key is None:
        raise ValueError("image has no stored original")
    if gate is None:
        return prepare(store.read(key), None, with_quality=False)
    return prepare(store.read(key), gate.hue_band)


def _finite(measures: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: a measure not taken is stored as null.
    return {k: (v if np.isfinite(v) else None) for k, v in measures.items()}


def score_chunk(
    sessions: sessionmaker[Session],
    store: ContentStore,
    model: Scorer,
    version_id: int,
    image_ids: Sequence[int],
    max_attempts: int,
    decode_pool: ThreadPoolExecutor | None = None,
    worker_name: str | None = None,
) -> ChunkOutcome:
    outcome = ChunkOutcome()
    claimed = claim(sessions, image_ids, version_id, max_attempts)
    outcome.skipped = len(image_ids) - len(claimed)
    if not claimed:
        return outcome

    # Decoding is per image: one unreadable file fails alone, the rest go on to the model.
    def load_one(item: tuple[int, str, str]) -> Prepared | Exception:
        try:
            return _load(store, item[1], model.gate)
        except Exception as exc:  # any decode or storage error is that image's own failure
            return exc

    loaded = list(decode_pool.map(load_one, claimed) if decode_pool else map(load_one, claimed))
    good = [
        (item, prep)
        for item, prep in zip(claimed, loaded, strict=True)
        if isinstance(prep, Prepared)
    ]
    bad = [
        (item, err)
        for item, err in zip(claimed, loaded, strict=True)
        if not isinstance(err, Prepared)
    ]

    scores = model.assess(np.stack([prep.pixels for _, prep in good])) if good else None
    now = datetime.now(UTC)
    threshold = model.card.threshold
    rows = []
    for i, (item, prep) in enumerate(good):
        assert scores is not None
        p, distance = float(scores.p_leukemia[i]), float(scores.domain_distance[i])
        decision = route_image(model.gate, threshold, p, prep.quality, distance, prep.original_mode)
        rows.append(
            {
                "image_id": item[0],
                "batch_id": item[2],
                "model_version_id": version_id,
                "p_leukemia": p,
                "flagged": decision.route != Route.CLEARED,
                "threshold": threshold,
                "route": decision.route.value,
                "route_reason": decision.reason.value if decision.reason else None,
                "domain_distance": distance if np.isfinite(distance) else None,
                "quality": {**_finite(prep.quality), "failed": list(decision.failed)},
                "scored_at": now,
                "worker": worker_name,
            }
        )
    with sessions.begin() as session:
        if good:
            _insert_ignoring_duplicates(session, rows)
            session.execute(
                update(Image)
                .where(Image.id.in_([item[0] for item, _ in good]))
                .values(state=ImageState.SCORED.value, error=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        for item, err in bad:
            session.execute(
                update(Image)
                .where(Image.id == item[0])
                .values(
                    state=ImageState.FAILED.value,
                    error=f"{type(err).__name__}: {err}"[:2000],
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
        mark_complete_batches(session, {item[2] for item in claimed})
    outcome.scored, outcome.failed = len(good), len(bad)
    if bad:
        log.warning("chunk: %d images failed to load: %s", len(bad), [i[0] for i, _ in bad])
    return outcome


def fail_chunk(sessions: sessionmaker[Session], image_ids: Sequence[int], error: str) -> None:
    """After the last retry: the chunk's unfinished images get the error, not silence."""
    with sessions.begin() as session:
        batch_ids = set(
            session.scalars(select(Image.batch_id).where(Image.id.in_(image_ids)).distinct())
        )
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.state.in_(PENDING))
            .values(state=ImageState.FAILED.value, error=error[:2000], updated_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        mark_complete_batches(session, batch_ids)
