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
transition that can finish an image calls in the same transaction, and which writes the
``batch.complete`` webhook deliveries in that transaction too), and goes back to ``scoring``
when a part is added (``reopen_batch``).

Webhook deliveries (``webhook_delivery`` rows, the outbox) have states of their own:

    (event)      → pending                    ``emit`` (in the event's own transaction)
    pending      → pending   (attempts + 1)   ``claim_delivery`` (a sender took it)
    pending      → delivered | failed         ``finish_delivery``, ``claim_delivery`` (attempts
                                              used up, webhook deactivated)
    any          → pending   (attempts 0)     ``resend_delivery`` (an admin's re-send)

A result that goes to a person gets its explanation heatmap after scoring (``model.explain``,
made by ``worker.explain``); the result's ``heatmap_key`` is its only state:

    null         → the overlay's storage key   ``set_heatmaps`` (once: never replaced)
    null         → null, asked for again       ``request_stale_heatmaps`` (the reconciler)
    null         → null, asked for by a person  ``ask_for_heatmap`` (the review page, any age)
    any          → null                        ``mark_purged`` (retention removed the pixels)

Every function that takes a ``sessionmaker`` runs its change in one transaction of its own:
an image's new state, its result and its batch's completion commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, insert, inspect, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from db.drift import check_completed
from db.errors import Conflict
from db.models import (
    Base,
    Batch,
    BatchState,
    DeliveryState,
    Image,
    ImageState,
    Result,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)

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
    # A network with the subtype head (``model.card.P_CLASSES``): the most likely B-ALL
    # subtype and the probability of each given leukemia; None for the other networks.
    subtype: str | None = None
    subtype_probs: dict[str, float] | None = None


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


def mark_purged(session: Session, image_ids: Sequence[int]) -> None:
    """Record that retention removed these images' pixels (``db.retention``), their heatmaps
    included; not a state: the image stays ``scored`` (or ``failed``) with its results."""
    session.execute(
        update(Image)
        .where(Image.id.in_(image_ids))
        .values(purged_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Result)
        .where(Result.image_id.in_(image_ids), Result.heatmap_key.is_not(None))
        .values(heatmap_key=None)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class HeatmapWanted:
    """A result of the worker's model that goes to a person (``flagged``: route flagged or
    manual review) and has no heatmap yet."""

    result_id: int
    image_id: int
    storage_key: str


def heatmaps_to_make(
    sessions: sessionmaker[Session], image_ids: Sequence[int], version_id: int
) -> list[HeatmapWanted]:
    """The results among these images' that want a heatmap from model version ``version_id``:
    routed to a person, none made yet, and the image's pixels still stored. A result of
    another model version is left for a worker that loads that model: a heatmap shows what
    the network that made the score looked at."""
    if not image_ids:
        return []
    with sessions() as session:
        rows = session.execute(
            select(Result.id, Result.image_id, Image.storage_key)
            .join(Image, Image.id == Result.image_id)
            .where(
                Result.image_id.in_(image_ids),
                Result.model_version_id == version_id,
                Result.flagged.is_(True),
                Result.heatmap_key.is_(None),
                Image.purged_at.is_(None),
                Image.storage_key.is_not(None),
            )
            .order_by(Result.id)
        ).all()
    return [HeatmapWanted(r.id, r.image_id, r.storage_key) for r in rows]


def set_heatmaps(sessions: sessionmaker[Session], keys: Mapping[int, str]) -> list[int]:
    """Record each result's stored heatmap (result id -> storage key); returns the ids set.

    Idempotent: a result that has a heatmap already keeps it (a duplicated task made the same
    one), and an image purged meanwhile gets none (retention has removed its pixels).
    """
    done: list[int] = []
    if not keys:
        return done
    purged = select(Image.id).where(Image.id == Result.image_id, Image.purged_at.is_not(None))
    with sessions.begin() as session:
        for result_id, key in keys.items():
            found = session.scalar(
                update(Result)
                .where(Result.id == result_id, Result.heatmap_key.is_(None), ~purged.exists())
                .values(heatmap_key=key)
                .returning(Result.id)
                .execution_options(synchronize_session=False)
            )
            if found is not None:
                done.append(found)
    return done


def ask_for_heatmap(
    session: Session, result_id: int, now: datetime, again_after: timedelta
) -> bool:
    """A reviewer wants this result's heatmap: record when, and say whether to send its task
    now. False when it has one already or was asked for (by anyone, or the reconciler)
    within ``again_after``: a reviewer pressing H over and over sends one task. In the
    caller's transaction; one UPDATE, so two reviewers at once send one task between them."""
    asked = session.execute(
        update(Result)
        .where(
            Result.id == result_id,
            Result.heatmap_key.is_(None),
            or_(
                Result.heatmap_requested_at.is_(None),
                Result.heatmap_requested_at < now - again_after,
            ),
        )
        .values(heatmap_requested_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(asked.rowcount)  # type: ignore[attr-defined]


def request_stale_heatmaps(
    sessions: sessionmaker[Session], stale_before: datetime, scored_since: datetime, limit: int
) -> list[int]:
    """Images whose newest result goes to a person, was scored since ``scored_since`` and has
    no heatmap although it was scored (or last asked for) before ``stale_before``: the message
    was lost or its worker died. Their ``heatmap_requested_at`` is set here, so that the next
    reconciler run waits another period before asking again. Returns the image ids."""
    now = datetime.now(UTC)
    newer = aliased(Result)
    with sessions.begin() as session:
        rows = session.execute(
            select(Result.id, Result.image_id)
            .join(Image, Image.id == Result.image_id)
            .where(
                Result.scored_at >= scored_since,
                Result.scored_at < stale_before,
                Result.flagged.is_(True),
                Result.heatmap_key.is_(None),
                or_(
                    Result.heatmap_requested_at.is_(None),
                    Result.heatmap_requested_at < stale_before,
                ),
                Image.purged_at.is_(None),
                Image.storage_key.is_not(None),
                ~exists().where(newer.image_id == Result.image_id, newer.id > Result.id),
            )
            .order_by(Result.scored_at)
            .limit(limit)
        ).all()
        if rows:
            session.execute(
                update(Result)
                .where(Result.id.in_([r.id for r in rows]))
                .values(heatmap_requested_at=now)
                .execution_options(synchronize_session=False)
            )
    return [r.image_id for r in rows]


def scoring_pending(sessions: sessionmaker[Session]) -> bool:
    """Whether any image anywhere is still waiting or being scored (one index probe)."""
    with sessions() as session:
        return bool(session.scalar(select(exists().where(Image.state.in_(PENDING)))))


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


def unclaim(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> None:
    """Give back a claim whose images could not be read because the image store is down:
    they return to ``queued`` and the attempt is not counted, since no worker died on them
    (``attempts`` counts lost workers, and an outage must not fail images as poison)."""
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.state == ImageState.SCORING.value)
            .values(
                state=ImageState.QUEUED.value,
                attempts=Image.attempts - 1,
                updated_at=datetime.now(UTC),
            )
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
    _insert_ignoring_duplicates(
        session, Result, ["image_id", "model_version_id"], [asdict(r) for r in results]
    )
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
    completed = session.scalars(
        update(Batch)
        .where(Batch.id.in_(batch_ids), Batch.state != BatchState.COMPLETE.value, ~waiting)
        .values(state=BatchState.COMPLETE.value)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    ).all()
    check_completed(session, batch_ids)
    for batch_id in completed:
        _emit_batch_complete(session, batch_id)


def _emit_batch_complete(session: Session, batch_id: str) -> None:
    # Imported here: db.progress reads this module's PENDING.
    from db.progress import batch_progress, batch_specimen_ids

    batch = session.get(Batch, batch_id)
    if batch is None:
        return
    # Only the batch's own laboratory hears of it.
    webhooks = subscribers(session, WebhookEvent.BATCH_COMPLETE, batch.laboratory_id)
    if not webhooks:
        return
    progress = batch_progress(session, batch_id)
    emit(
        session,
        WebhookEvent.BATCH_COMPLETE,
        # A batch completes again after a part is added: each completion is its own event.
        f"{batch_id}/{progress.total}",
        {
            "batch_id": batch_id,
            "name": batch.name,
            "submitted_by": batch.submitted_by,
            "images": progress.total,
            "counts": progress.counts,
            "routes": progress.routes,
            "specimens": batch_specimen_ids(session, batch_id),
            "drift_alarm": bool((batch.drift or {}).get("alarm")),
            "results_path": f"/api/v1/batches/{batch_id}/results",
            "fhir_path": f"/api/v1/batches/{batch_id}/fhir",
        },
        webhooks,
    )


# The session.info key under which ``emit`` lists the deliveries its transaction wrote:
# ``worker.dispatch.watch_outbox`` enqueues them once that transaction has committed.
OUTBOX = "leukoscreen_outbox"


def subscribers(session: Session, event: WebhookEvent, laboratory_id: int) -> list[int]:
    """Ids of the laboratory's active webhooks subscribed to ``event`` (a handful: filtered
    here); no laboratory hears of another's events."""
    rows = session.execute(
        select(Webhook.id, Webhook.events).where(
            Webhook.active, Webhook.laboratory_id == laboratory_id
        )
    ).all()
    return [r.id for r in rows if event.value in (r.events or [])]


def emit(
    session: Session,
    event: WebhookEvent,
    subject: str,
    payload: dict[str, Any],
    webhooks: list[int] | None = None,
    *,
    laboratory_id: int | None = None,
) -> list[str]:
    """Write one pending delivery per active webhook subscribed to ``event``, in the caller's
    transaction: the event and its deliveries commit together or not at all (the outbox).

    ``subject`` names the occurrence (a batch's completion, a sign-off): emitting the same
    event for the same subject again writes nothing, so a retried transaction or a re-run task
    never notifies twice. Returns the new delivery ids (also listed in ``session.info``).
    """
    if webhooks is None and laboratory_id is None:
        raise ValueError("emit needs the event's laboratory (or the webhook ids)")
    targets = (
        subscribers(session, event, laboratory_id)
        if webhooks is None and laboratory_id is not None
        else webhooks or []
    )
    if not targets:
        return []
    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "webhook_id": webhook_id,
            "event": event.value,
            "subject": subject[:255],
            "payload": payload,
            "state": DeliveryState.PENDING.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for webhook_id in targets
    ]
    created = _insert_ignoring_duplicates(
        session, WebhookDelivery, ["webhook_id", "event", "subject"], rows
    )
    session.info.setdefault(OUTBOX, []).extend(created)
    return created


@dataclass(frozen=True)
class DeliveryClaim:
    """A delivery a sender has taken (attempts + 1) and must now send and finish."""

    delivery_id: str
    event: str
    payload: dict[str, Any]
    created_at: datetime
    url: str
    secret_encrypted: str
    attempt: int


def claim_delivery(
    sessions: sessionmaker[Session], delivery_id: str, max_attempts: int
) -> DeliveryClaim | None:
    """Take a pending delivery for one send, or None: already delivered or failed (a
    re-delivered task sends nothing), taken by a concurrent sender, its webhook deactivated
    or its attempts used up (those two are marked ``failed`` here)."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        row = session.execute(
            select(WebhookDelivery, Webhook.url, Webhook.secret_encrypted, Webhook.active)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
        if row is None or row[0].state != DeliveryState.PENDING.value:
            return None
        delivery: WebhookDelivery = row[0]
        if not row.active or delivery.attempts >= max_attempts:
            why = (
                "webhook deactivated"
                if not row.active
                else f"gave up after {max_attempts} attempts (sender lost each time)"
            )
            _finish(session, delivery_id, DeliveryState.FAILED, now, last_error=why)
            return None
        # Compare-and-set on attempts: of two senders holding the same delivery, one sends.
        taken = session.scalar(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.state == DeliveryState.PENDING.value,
                WebhookDelivery.attempts == delivery.attempts,
            )
            .values(attempts=delivery.attempts + 1, updated_at=now)
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        )
        if taken is None:
            return None
        return DeliveryClaim(
            delivery_id=delivery_id,
            event=delivery.event,
            payload=delivery.payload,
            created_at=delivery.created_at,
            url=row.url,
            secret_encrypted=row.secret_encrypted,
            attempt=delivery.attempts + 1,
        )


def finish_delivery(
    sessions: sessionmaker[Session],
    claim: DeliveryClaim,
    *,
    delivered: bool,
    status: int | None,
    error: str | None,
    max_attempts: int,
) -> DeliveryState:
    """Record one send: ``delivered``, ``failed`` once attempts are used up, else still
    ``pending`` (the sender retries later). Returns the state written."""
    if delivered:
        state = DeliveryState.DELIVERED
    elif claim.attempt >= max_attempts:
        state = DeliveryState.FAILED
    else:
        state = DeliveryState.PENDING
    now = datetime.now(UTC)
    with sessions.begin() as session:
        _finish(
            session,
            claim.delivery_id,
            state,
            now,
            last_status=status,
            last_error=None if delivered else (error or "")[:ERROR_LIMIT],
            delivered_at=now if delivered else None,
        )
    return state


def _finish(
    session: Session, delivery_id: str, state: DeliveryState, now: datetime, **values: Any
) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING.value,
        )
        .values(state=state.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )


def resend_delivery(session: Session, delivery: WebhookDelivery) -> None:
    """Send a delivery again, whatever its state, with the same id (a receiver that has it
    already drops it) and a fresh count of attempts; enqueued once the caller commits."""
    webhook = session.get(Webhook, delivery.webhook_id)
    if webhook is None or not webhook.active:
        raise Conflict(f"webhook {delivery.webhook_id} is deactivated: nothing is sent to it")
    delivery.state = DeliveryState.PENDING.value
    delivery.attempts = 0
    delivery.updated_at = datetime.now(UTC)
    session.info.setdefault(OUTBOX, []).append(delivery.id)


def stale_deliveries(
    sessions: sessionmaker[Session], stale_before: datetime, limit: int
) -> list[str]:
    """Pending deliveries untouched since ``stale_before``: their message was lost (broker
    down at commit, a flushed Redis) or their sender died. Touched here, so that the next
    reconciler run waits another period before sending them again."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        ids = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state == DeliveryState.PENDING.value,
                    WebhookDelivery.updated_at < stale_before,
                )
                .order_by(WebhookDelivery.updated_at)
                .limit(limit)
            )
        )
        if ids:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids


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


def _insert_ignoring_duplicates(
    session: Session, model: type[Base], unique: list[str], rows: list[dict[str, Any]]
) -> list[Any]:
    """Insert ``rows``, dropping those whose ``unique`` columns exist already; returns the
    primary keys of the rows inserted."""
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(model).on_conflict_do_nothing(index_elements=unique)
    elif dialect == "sqlite":
        stmt = sqlite.insert(model).on_conflict_do_nothing(index_elements=unique)
    else:  # the unique constraint still guarantees one row; other databases just fail loudly
        stmt = insert(model)
    key = inspect(model).primary_key[0]
    return list(session.scalars(stmt.returning(key), rows))
