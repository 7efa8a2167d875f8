"""Re-enqueue work the broker may have lost: the database says what is still to be done."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import request_stale_heatmaps, requeue_stale, stale_deliveries
from db.models import Image, ImageState
from leukoscreen import logs, metrics
from leukoscreen.config import Settings
from worker.dispatch import enqueue_deliveries, enqueue_heatmaps, enqueue_images

log = logging.getLogger(__name__)

# Images accepted while the broker was down have never been enqueued; pick them up soon
# rather than after the full stale timeout.
NEVER_ENQUEUED_GRACE = timedelta(seconds=30)
# Heatmaps still missing are asked for again for results scored this recently: a reviewer
# looks at an image within days. Older results without one (scored before heatmaps existed, or
# by a model no worker loads any more) are left alone, and the query stays on the recent
# end of the ``scored_at`` index.
HEATMAP_WINDOW = timedelta(days=3)


@dataclass
class ReconcileReport:
    requeued_from_scoring: int = 0
    failed_exhausted: int = 0
    enqueued: int = 0
    stale_queued: int = 0
    deliveries_enqueued: int = 0
    heatmaps_enqueued: int = 0


def reconcile(
    celery: Celery, sessions: sessionmaker[Session], settings: Settings, limit: int = 10_000
) -> ReconcileReport:
    report = ReconcileReport()
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=settings.stale_after_s)
    # A chunk stuck in "scoring" means its worker died (or is hung) mid-chunk.
    stuck = requeue_stale(sessions, stale, settings.max_attempts, limit)
    report.requeued_from_scoring, report.failed_exhausted = len(stuck.requeued), len(stuck.failed)
    with sessions() as session:
        waiting = session.execute(
            select(Image.id, Image.batch_id)
            .where(
                Image.state == ImageState.QUEUED.value,
                or_(
                    Image.enqueued_at < stale,
                    and_(
                        Image.enqueued_at.is_(None), Image.created_at < now - NEVER_ENQUEUED_GRACE
                    ),
                    # Just released from a dead worker above.
                    Image.id.in_(stuck.requeued) if stuck.requeued else false(),
                ),
            )
            .order_by(Image.id)
            .limit(limit)
        ).all()
    report.stale_queued = len(waiting)
    by_batch: dict[str, list[int]] = defaultdict(list)
    for image_id, batch_id in waiting:
        by_batch[batch_id].append(image_id)
    for batch_id, ids in by_batch.items():
        # Per batch, so that its tasks and these lines name the batch a technician follows.
        with logs.bound(batch_id=batch_id):
            sent = enqueue_images(
                celery, sessions, ids, settings.chunk_size, settings.default_queue
            )
            log.info(
                "reconciler re-enqueued %d of %d waiting images",
                sent,
                len(ids),
                extra=logs.image_ids(ids),
            )
        report.enqueued += sent
    metrics.RECONCILER.labels("requeued").inc(report.requeued_from_scoring)
    metrics.RECONCILER.labels("failed").inc(report.failed_exhausted)
    metrics.RECONCILER.labels("enqueued").inc(report.enqueued)
    # Webhook deliveries whose message was lost or whose sender died: pending and untouched.
    if lost := stale_deliveries(sessions, stale, limit):
        report.deliveries_enqueued = enqueue_deliveries(celery, lost)
    # Heatmaps of images that go to a person, still missing well after scoring: the message
    # was lost, its worker died or a worker of another model version took it.
    if missing := request_stale_heatmaps(sessions, stale, now - HEATMAP_WINDOW, limit):
        report.heatmaps_enqueued = enqueue_heatmaps(celery, missing, settings.chunk_size)
        log.info("reconciler asked again for %d heatmaps", report.heatmaps_enqueued)
    return report
