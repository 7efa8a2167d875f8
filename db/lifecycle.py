"""The image lifecycle: the one module that changes an image's (or a batch's) state.

An image row's ``state`` is the source of truth for the whole service (tasks carry ids only),
so every transition is written here and nowhere else (``tests/test_lifecycle.py`` checks):

    (intake)     → queued | rejected | duplicate   ``admit``
    queued       → scoring   (attempts + 1)   ``claim``
    scoring      → scoring   (redelivered)    ``claim``
    scoring      → scored                     ``claim`` (result already there), ``mark_scored``
    scoring      → failed                     ``claim`` (attempts used up), ``mark_failed``,
                                              ``fail_unfinished``, ``requeue_stale``
    scoring      → queued    (worker lost)    ``requeue_stale``, ``release`` (split to retry)

A batch is ``complete`` once none of its images is pending (``complete_batches``, which every
transition that can finish an image calls in the same transaction), and goes back to
``scoring`` when a part is added (``reopen_batch``).

Every function that takes a ``sessionmaker`` runs its change in one transaction of its own:
an image's new state, its result and its batch's completion commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from db.drift import check_completed
from db.models import Batch, BatchState, Image, ImageState, Result

# Images a worker still has to finish: a batch with none of these is complete.
PENDING = (ImageState.QUEUED.value, ImageState.SCORING.value)

# Image.error is TEXT, but an exception's message can be a whole traceback or a data dump.
ERROR_LIMIT = 2000


def exhausted_error(max_attempts: int) -> str:
    """The error of an image whose claims used up ``max_attempts`` without a result.

    Each claim counts one attempt and only a worker that died (or hung) mid-chunk leaves an
    image claimed without a result, so the message says so. Claim and reconciler both use it.
    """
    return f"gave up after {max_attempts} attempts (worker lost each time)"


@dataclass(frozen=True)
class Claimed:
    """An image a worker has moved to ``scoring`` and must now score or fail."""

    image_id: int
    storage_key: str | None  # None only for a row the intake rejected, never claimed
    batch_id: str


@dataclass(frozen=True)
class NewResult:
    """One result row as the worker decided it (the route comes from ``model.gate``)."""

    image_id: int
    batch_id: str
    model_version_id: int
    p_leukemia: float
    flagged: bool  # goes to a person: flagged or manual review
    threshold: float
    route: str
    route_reason: str | None
    domain_distance: float | None
    quality: dict[str, Any]
    scored_at: datetime
    worker: str | None


@dataclass(frozen=True)
class Failure:
    """An image that cannot be scored, with the reason stored in ``image.error``."""

    image_id: int
    batch_id: str
    error: str


@dataclass(frozen=True)
class Requeued:
    """What ``requeue_stale`` did to images stuck in ``scoring``."""

    requeued: list[int]  # back to ``queued``: enqueue them again
    failed: list[int]  # attempts used up: ``failed`` with ``exhausted_error``


def admit(
    session: Session,
    batch: Batch,
    *,
    accepted: bool,
    now: datetime,
    duplicate_of: Image | None = None,
    **columns: Any,
) -> Image:
    """Add the intake's row for one file: ``queued`` if it was accepted (and stored);
    ``duplicate`` when ``duplicate_of``, an image of the same batch, brought the same bytes
    (finished at once: its twin is scored for both); else ``rejected`` (never stored, never
    scored; ``columns["error"]`` says why)."""
    if duplicate_of is not None:
        state = ImageState.DUPLICATE
    else:
        state = ImageState.QUEUED if accepted else ImageState.REJECTED
    image = Image(
        batch=batch,
        state=state.value,
        duplicate_of=duplicate_of,
        created_at=now,
        updated_at=now,
        **columns,
    )
    session.add(image)
    return image


def reopen_batch(batch: Batch) -> None:
    """A part with new images was added: the batch scores again, and its drift is judged anew
    once they are scored."""
    batch.state = BatchState.SCORING.value
    batch.drift = None


def mark_enqueued(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> None:
    """Record that a message for these images was sent, so the reconciler waits for it before
    sending another (the state stays ``queued``)."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        # Bounded IN lists: a large upload is enqueued in one call.
        for start in range(0, len(image_ids), 500):
            session.execute(
                update(Image)
                .where(Image.id.in_(image_ids[start : start + 500]))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )


def pending_attempts(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> dict[int, int]:
    """Attempts so far of the images among ``image_ids`` still to be scored."""
    with sessions() as session:
        rows = session.execute(
            select(Image.id, Image.attempts).where(
                Image.id.in_(image_ids), Image.state.in_(PENDING)
            )
        ).all()
    return {r.id: r.attempts for r in rows}


def release(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> None:
    """Put pending images back to ``queued`` with no message out (``enqueued_at`` cleared):
    the caller is about to send them again in other groups, and until it has, nobody is
    scoring them (the reconciler sends them if that send fails)."""
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.state.in_(PENDING))
            .values(state=ImageState.QUEUED.value, updated_at=datetime.now(UTC), enqueued_at=None)
            .execution_options(synchronize_session=False)
        )


def claim(
    sessions: sessionmaker[Session], image_ids: Sequence[int], version_id: int, max_attempts: int
) -> list[Claimed]:
    """Move the chunk's pending images to ``scoring`` (attempts + 1) and return them.

    Not returned: images no longer pending (a duplicate delivery), images that already have
    this model's result (marked ``scored`` without scoring them again), and images whose
    attempts are used up (marked ``failed``: they killed every worker that took them).
    """
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
        claimed = [r for r in rows if r.id not in done and r.attempts < max_attempts]
        exhausted = [r.id for r in rows if r.id not in done and r.attempts >= max_attempts]
        if done:
            _set_state(session, done, ImageState.SCORED, now)
        if exhausted:
            _set_state(
                session, exhausted, ImageState.FAILED, now, error=exhausted_error(max_attempts)
            )
        if claimed:
            session.execute(
                update(Image)
                .where(Image.id.in_([r.id for r in claimed]))
                .values(state=ImageState.SCORING.value, attempts=Image.attempts + 1, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        if done or exhausted:
            complete_batches(session, {r.batch_id for r in rows})
    return [Claimed(r.id, r.storage_key, r.batch_id) for r in claimed]


def finish(
    sessions: sessionmaker[Session],
    results: Sequence[NewResult],
    failures: Sequence[Failure],
    batch_ids: Iterable[str],
) -> None:
    """Store a scored chunk in one transaction: results (``scored``), per-image failures
    (``failed``), then complete the chunk's batches."""
    with sessions.begin() as session:
        mark_scored(session, results)
        mark_failed(session, failures)
        complete_batches(session, set(batch_ids))


def mark_scored(session: Session, results: Sequence[NewResult]) -> None:
    """Insert the results and mark their images ``scored``.

    Idempotent: a result that exists for (image, model version), written by a racing or
    redelivered task, is kept and the new one dropped (ON CONFLICT DO NOTHING).
    """
    if not results:
        return
    _insert_ignoring_duplicates(session, [asdict(r) for r in results])
    _set_state(
        session,
        [r.image_id for r in results],
        ImageState.SCORED,
        max(r.scored_at for r in results),
        error=None,
    )


def mark_failed(session: Session, failures: Sequence[Failure]) -> None:
    """Mark each image ``failed`` with its own error (one undecodable file fails alone)."""
    now = datetime.now(UTC)
    for f in failures:
        _set_state(session, [f.image_id], ImageState.FAILED, now, error=f.error[:ERROR_LIMIT])


def fail_unfinished(sessions: sessionmaker[Session], image_ids: Sequence[int], error: str) -> None:
    """Mark the images among ``image_ids`` still pending ``failed`` with ``error``; finished
    ones keep their state (after a chunk's last retry: the error, not silence)."""
    with sessions.begin() as session:
        batch_ids = set(
            session.scalars(select(Image.batch_id).where(Image.id.in_(image_ids)).distinct())
        )
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.state.in_(PENDING))
            .values(
                state=ImageState.FAILED.value,
                error=error[:ERROR_LIMIT],
                updated_at=datetime.now(UTC),
            )
            .execution_options(synchronize_session=False)
        )
        complete_batches(session, batch_ids)


def requeue_stale(
    sessions: sessionmaker[Session], stale_before: datetime, max_attempts: int, limit: int
) -> Requeued:
    """Images in ``scoring`` not touched since ``stale_before`` lost their worker: back to
    ``queued`` while attempts are left (``enqueued_at`` cleared: no message is out for them),
    else ``failed``."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        stuck = session.execute(
            select(Image.id, Image.attempts, Image.batch_id)
            .where(Image.state == ImageState.SCORING.value, Image.updated_at < stale_before)
            .limit(limit)
        ).all()
        retry = [r.id for r in stuck if r.attempts < max_attempts]
        exhausted = [r.id for r in stuck if r.attempts >= max_attempts]
        # The state condition again in the UPDATE: a worker may have finished one meanwhile.
        if retry:
            session.execute(
                update(Image)
                .where(Image.id.in_(retry), Image.state == ImageState.SCORING.value)
                .values(state=ImageState.QUEUED.value, updated_at=now, enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
        if exhausted:
            session.execute(
                update(Image)
                .where(Image.id.in_(exhausted), Image.state == ImageState.SCORING.value)
                .values(
                    state=ImageState.FAILED.value,
                    updated_at=now,
                    error=exhausted_error(max_attempts),
                )
                .execution_options(synchronize_session=False)
            )
            complete_batches(session, {r.batch_id for r in stuck})
    return Requeued(requeued=retry, failed=exhausted)


def complete_batches(session: Session, batch_ids: set[str]) -> None:
    """Set a batch complete once none of its images is waiting or being scored, then judge
    the completed ones for drift (``db.drift.check_completed``)."""
    if not batch_ids:
        return
    waiting = (
        select(Image.id).where(and_(Image.batch_id == Batch.id, Image.state.in_(PENDING))).exists()
    )
    session.execute(
        update(Batch)
        .where(Batch.id.in_(batch_ids), ~waiting)
        .values(state=BatchState.COMPLETE.value)
        .execution_options(synchronize_session=False)
    )
    check_completed(session, batch_ids)


def _set_state(
    session: Session,
    image_ids: Iterable[int],
    state: ImageState,
    now: datetime,
    **values: Any,
) -> None:
    session.execute(
        update(Image)
        .where(Image.id.in_(list(image_ids)))
        .values(state=state.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> None:
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
