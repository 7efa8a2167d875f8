"""Scoring one chunk of images: claim in SQL, preprocess, one batched model call, store results.

Idempotent by construction (the state changes are ``db/lifecycle.py``'s): only images still
``queued``/``scoring`` are claimed, results are inserted with ON CONFLICT DO NOTHING on (image,
model version), and an image that already has a result for this model is simply marked scored.
A re-delivered or duplicated task is harmless. This module decides each image's result (the
route comes from ``model.gate.route_image``); the lifecycle stores it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import Claimed, Failure, NewResult
from db.models import ModelVersion
from leukoscreen import metrics
from leukoscreen.storage import StorageUnavailable, Store
from model.card import SUBTYPES, ModelCard
from model.gate import Gate, Route, route_image
from model.inference import Scores
from model.precision import version_name
from model.preprocess import Prepared, prepare

log = logging.getLogger(__name__)


class Scorer(Protocol):
    sha256: str
    card: ModelCard
    gate: Gate | None
    precision: str  # ``model.precision``: the arithmetic the network runs in

    def assess(self, images: np.ndarray) -> Scores: ...


@dataclass
class ChunkOutcome:
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    # Images scored in this chunk that go to a person: their heatmaps are asked for next.
    to_person: list[int] = field(default_factory=list)


def register_model_version(sessions: sessionmaker[Session], model: Scorer) -> int:
    """Get or create the ModelVersion row for these weights (safe when workers race)."""
    with sessions() as session:
        found = session.scalar(select(ModelVersion.id).where(ModelVersion.sha256 == model.sha256))
        if found is not None:
            return found
        version = ModelVersion(
            sha256=model.sha256,
            name=version_name(model.card.name, model.precision),
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


def retry_group_size(attempts: int, chunk_size: int, max_attempts: int) -> int:
    """How many images may share a task once one of them has ``attempts`` claims behind it.

    An image claimed without a result killed (or hung) the worker holding it, or one of its
    neighbours did. Each loss halves the group, so a poison image is cornered in a few rounds;
    from its last attempt but one every image goes alone, so an innocent neighbour always has
    a try without the poison before its attempts run out, and only the poison ends ``failed``.
    """
    if attempts <= 0:
        return chunk_size
    if attempts >= max_attempts - 1:
        return 1
    return max(1, chunk_size >> attempts)


def split_for_retry(
    sessions: sessionmaker[Session], image_ids: Sequence[int], chunk_size: int, max_attempts: int
) -> list[list[int]]:
    """Groups to send again instead of scoring this chunk now, or [] to score it.

    A chunk redelivered after its worker died (``task_reject_on_worker_lost``) or sent again
    by the reconciler holds images with attempts behind them: when it is larger than
    ``retry_group_size`` allows, its pending images are released to ``queued`` and returned
    in groups of that size, for the caller to enqueue.
    """
    attempts = lifecycle.pending_attempts(sessions, image_ids)
    if not attempts:
        return []
    size = retry_group_size(max(attempts.values()), chunk_size, max_attempts)
    if len(attempts) <= size:
        return []
    pending = sorted(attempts)
    lifecycle.release(sessions, pending)
    return [pending[i : i + size] for i in range(0, len(pending), size)]


def _load(store: Store, key: str | None, model: Scorer) -> Prepared:
    if key is None:
        raise ValueError("image has no stored original")
    size = model.card.input_size
    if model.gate is None:
        return prepare(store.read(key), None, size, with_quality=False)
    return prepare(store.read(key), model.gate.hue_band, size)


def _finite(measures: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: a measure not taken is stored as null.
    return {k: (v if np.isfinite(v) else None) for k, v in measures.items()}


def _subtype(scores: Scores, i: int) -> tuple[str | None, dict[str, float] | None]:
    """Image ``i``'s most likely subtype and every subtype's probability given leukemia.

    Stored for every image the network saw, cleared ones included: the pages show it only for
    images that go to a person, but exports and the JSON carry every image's."""
    if scores.subtype_probs is None or not np.all(np.isfinite(scores.subtype_probs[i])):
        return None, None
    row = scores.subtype_probs[i]
    return SUBTYPES[int(np.argmax(row))], {
        name: float(v) for name, v in zip(SUBTYPES, row, strict=True)
    }


def score_chunk(
    sessions: sessionmaker[Session],
    store: Store,
    model: Scorer,
    version_id: int,
    image_ids: Sequence[int],
    max_attempts: int,
    decode_pool: ThreadPoolExecutor | None = None,
    worker_name: str | None = None,
) -> ChunkOutcome:
    outcome = ChunkOutcome()
    claimed = lifecycle.claim(sessions, image_ids, version_id, max_attempts)
    outcome.skipped = len(image_ids) - len(claimed)
    if not claimed:
        return outcome

    # Decoding is per image: one unreadable file fails alone, the rest go on to the model.
    def load_one(item: Claimed) -> Prepared | Exception:
        try:
            return _load(store, item.storage_key, model)
        except StorageUnavailable:
            raise  # the store is down, not the image: the task retries the chunk
        except Exception as exc:  # any decode or storage error is that image's own failure
            return exc

    try:
        loaded = list(decode_pool.map(load_one, claimed) if decode_pool else map(load_one, claimed))
    except StorageUnavailable:
        # The store is down, not the images: no attempt is spent, the task retries the chunk.
        lifecycle.unclaim(sessions, [item.image_id for item in claimed])
        raise
    good = [
        (item, prep)
        for item, prep in zip(claimed, loaded, strict=True)
        if isinstance(prep, Prepared)
    ]
    bad = [
        Failure(item.image_id, item.batch_id, f"{type(err).__name__}: {err}")
        for item, err in zip(claimed, loaded, strict=True)
        if not isinstance(err, Prepared)
    ]

    scores = None
    if good:
        started = time.perf_counter()
        scores = model.assess(np.stack([prep.pixels for _, prep in good]))
        metrics.MODEL_SECONDS_PER_IMAGE.observe((time.perf_counter() - started) / len(good))
    now = datetime.now(UTC)
    threshold = model.card.threshold
    results = []
    for i, (item, prep) in enumerate(good):
        assert scores is not None
        p, distance = float(scores.p_leukemia[i]), float(scores.domain_distance[i])
        subtype, subtype_probs = _subtype(scores, i)
        decision = route_image(model.gate, threshold, p, prep.quality, distance, prep.original_mode)
        results.append(
            NewResult(
                image_id=item.image_id,
                batch_id=item.batch_id,
                model_version_id=version_id,
                p_leukemia=p,
                flagged=decision.route != Route.CLEARED,
                threshold=threshold,
                route=decision.route.value,
                route_reason=decision.reason.value if decision.reason else None,
                domain_distance=distance if np.isfinite(distance) else None,
                quality={**_finite(prep.quality), "failed": list(decision.failed)},
                scored_at=now,
                worker=worker_name,
                subtype=subtype,
                subtype_probs=subtype_probs,
            )
        )
    lifecycle.finish(sessions, results, bad, {item.batch_id for item in claimed})
    outcome.scored, outcome.failed = len(good), len(bad)
    outcome.to_person = [r.image_id for r in results if r.flagged]
    metrics.IMAGES_SCORED.inc(len(good))
    metrics.IMAGES_FAILED.inc(len(bad))
    if bad:
        log.warning("chunk: %d images failed to load: %s", len(bad), [f.image_id for f in bad])
    return outcome
