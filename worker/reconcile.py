"""Re-enqueue work the broker may have lost: the database says what is still to be done."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import and_, false, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Image, ImageState
from db.progress import mark_complete_batches
from leukoscreen.config import Settings
from worker.dispatch import enqueue_images

# Images accepted while the broker was down have never been enqueued; pick them up soon
# rather than after the full stale timeout.
NEVER_ENQUEUED_GRACE = timedelta(seconds=30)


@dataclass
class ReconcileReport:
    requeued_from_scoring: int = 0
    failed_exhausted: int = 0
    enqueued: int = 0
    stale_queued: int = 0


def reconcile(
    celery: Celery, sessions: sessionmaker[Session], settings: Settings, limit: int = 10_000
) -> ReconcileReport:
    report = ReconcileReport()
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=settings.stale_after_s)
    with sessions.begin() as session:
        # A chunk stuck in "scoring" means its worker died (or is hung) mid-chunk.
        stuck = session.execute(
            select(Image.id, Image.attempts, Image.batch_id)
            .where(Image.state == ImageState.SCORING.value, Image.updated_at < stale)
            .limit(limit)
        ).all()
        retry = [r.id for r in stuck if r.attempts < settings.max_attempts]
        exhausted = [r.id for r in stuck if r.attempts >= settings.max_attempts]
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
                    error=f"gave up after {settings.max_attempts} attempts (worker lost each time)",
                )
                .execution_options(synchronize_session=False)
            )
            mark_complete_batches(session, {r.batch_id for r in stuck})
        report.requeued_from_scoring, report.failed_exhausted = len(retry), len(exhausted)

        waiting = session.scalars(
            select(Image.id)
            .where(
                Image.state == ImageState.QUEUED.value,
                or_(
                    Image.enqueued_at < stale,
                    and_(
                        Image.enqueued_at.is_(None), Image.created_at < now - NEVER_ENQUEUED_GRACE
                    ),
                    # Just released from a dead worker above.
                    Image.id.in_(retry) if retry else false(),
                ),
            )
            .order_by(Image.id)
            .limit(limit)
        ).all()
    report.stale_queued = len(waiting)
    if waiting:
        report.enqueued = enqueue_images(
            celery, sessions, waiting, settings.chunk_size, settings.default_queue
        )
    return report
