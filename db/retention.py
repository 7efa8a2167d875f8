"""Retention: the stored pixels of old images are removed; everything about them stays.

With ``LEUKOSCREEN_RETAIN_IMAGES_DAYS`` = N > 0, an image uploaded more than N days ago loses
its stored original and its results' explanation heatmaps (``image.purged_at`` is set,
``result.heatmap_key`` cleared, the image download answers 410 "image purged"); its row,
results, review decisions, specimen sign-offs and the audit trail are kept (nothing
append-only is touched). The beat task (hourly) and ``leukoscreen purge`` run it; each
transaction that purges something records one ``retention.purge`` audit event with its counts.

The store is content-addressed: identical bytes uploaded twice are one file. A file is removed
only when no image that keeps its pixels (a newer one, or one still being scored) names it,
as its original or as a heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.audit import Actor, record_event
from db.lifecycle import PENDING, mark_purged
from db.models import Image, Result
from leukoscreen.storage import Store

# Images per transaction: bounded IN lists, and row locks held for seconds, not minutes.
RUN_LIMIT = 1000


@dataclass
class PurgeReport:
    retain_days: int
    cutoff: str | None = None
    dry_run: bool = False
    images: int = 0
    files_removed: int = 0  # originals
    heatmaps_removed: int = 0  # explanation overlays (``model.explain``)
    files_kept_shared: int = 0
    bytes_freed: int = 0

    def add(self, other: PurgeReport) -> None:
        self.images += other.images
        self.files_removed += other.files_removed
        self.heatmaps_removed += other.heatmaps_removed
        self.files_kept_shared += other.files_kept_shared
        self.bytes_freed += other.bytes_freed


def purge_old_images(
    sessions: sessionmaker[Session],
    store: Store,
    retain_days: int,
    actor: Actor | None,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge every image older than ``retain_days`` (0: keep for ever, nothing done)."""
    report = PurgeReport(retain_days=retain_days, dry_run=dry_run)
    if retain_days <= 0:
        return report
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retain_days)
    report.cutoff = cutoff.isoformat()
    after_id = 0
    while True:
        part, after_id = _purge_some(sessions, store, cutoff, actor, dry_run, after_id)
        report.add(part)
        if part.images < RUN_LIMIT:
            return report


def _purge_some(
    sessions: sessionmaker[Session],
    store: Store,
    cutoff: datetime,
    actor: Actor | None,
    dry_run: bool,
    after_id: int,
) -> tuple[PurgeReport, int]:
    report = PurgeReport(retain_days=0, cutoff=cutoff.isoformat(), dry_run=dry_run)
    with sessions.begin() as session:
        rows = session.execute(
            select(Image.id, Image.storage_key)
            .where(
                Image.id > after_id,
                Image.purged_at.is_(None),
                Image.storage_key.is_not(None),
                Image.created_at < cutoff,
                Image.state.not_in(PENDING),
            )
            .order_by(Image.id)
            .limit(RUN_LIMIT)
        ).all()
        if not rows:
            return report, after_id
        ids = [r.id for r in rows]
        originals = {r.storage_key for r in rows if r.storage_key is not None}
        # The explanation overlays of their results (``model.explain``) are their pixels too.
        heatmaps = set(
            session.scalars(
                select(Result.heatmap_key)
                .where(Result.image_id.in_(ids), Result.heatmap_key.is_not(None))
                .distinct()
            )
        )
        files = originals | heatmaps
        # Content-addressed: a file any image that keeps its pixels names, as its original or
        # its heatmap, stays.
        shared = set(
            session.scalars(
                select(Image.storage_key)
                .where(
                    Image.storage_key.in_(files),
                    Image.purged_at.is_(None),
                    Image.id.not_in(ids),
                )
                .distinct()
            )
        ) | set(
            session.scalars(
                select(Result.heatmap_key)
                .join(Image, Image.id == Result.image_id)
                .where(
                    Result.heatmap_key.in_(files),
                    Image.purged_at.is_(None),
                    Image.id.not_in(ids),
                )
                .distinct()
            )
        )
        report.images = len(ids)
        report.files_kept_shared = len(shared)
        removable = sorted(k for k in files - shared if k is not None)
        if not dry_run:
            mark_purged(session, ids)
        # Files go before the commit: should it fail, the rows are purged again next run
        # (the files are gone already), whereas the other order could leave pixels for ever.
        # An identical upload arriving this very moment could still reuse a file removed
        # here; its image would then fail as unreadable rather than show another's pixels.
        for key in removable:
            size = store.size(key)
            if size is None:
                continue
            if not dry_run:
                store.remove(key)
            if key in originals:
                report.files_removed += 1
            else:
                report.heatmaps_removed += 1
            report.bytes_freed += size
        if dry_run:
            return report, ids[-1]
        record_event(
            session,
            actor,
            "retention.purge",
            "images",
            cutoff=report.cutoff,
            images=report.images,
            first_image_id=ids[0],
            last_image_id=ids[-1],
            files_removed=report.files_removed,
            heatmaps_removed=report.heatmaps_removed,
            files_kept_shared=report.files_kept_shared,
            bytes_freed=report.bytes_freed,
        )
    return report, ids[-1]
