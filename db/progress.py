"""Batch progress and result listings, derived from image states in SQL (never from Celery)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, select, tuple_
from sqlalchemy.orm import Session, aliased

from db.errors import Invalid
from db.lifecycle import PENDING
from db.models import Batch, Image, ImageState, ModelVersion, Result, Review, User
from db.reviews import (
    LEUKEMIA,
    current_review_condition,
    heatmap_url,
    latest_result_condition,
)
from db.subtypes import SUBTYPE_COLUMNS, subtype_json
from model.gate import REASON_TEXT, Route

# Machine codes of the export's ``reason_code`` that the intake does not store itself.
SCORING_FAILED = "scoring_failed"
DUPLICATE = "duplicate"
REJECTED = "rejected"  # a rejection recorded before codes were kept (migration 0006)


@dataclass(frozen=True)
class Progress:
    counts: dict[str, int]
    routes: dict[str, int]  # scored images by route (flagged, cleared, manual_review)
    first_scored_at: datetime | None

    @property
    def flagged(self) -> int:
        return self.routes.get(Route.FLAGGED.value, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def pending(self) -> int:
        return sum(self.counts.get(s, 0) for s in PENDING)

    @property
    def done(self) -> int:
        return self.total - self.pending

    def eta_seconds(self, now: datetime | None = None) -> float | None:
        """Remaining images divided by the rate at which this batch has been scored so far."""
        if self.pending == 0:
            return 0.0
        scored = self.counts.get(ImageState.SCORED.value, 0)
        if not scored or self.first_scored_at is None:
            return None
        now = now or datetime.now(UTC)
        elapsed = (now - self.first_scored_at).total_seconds()
        if elapsed <= 0:
            return None
        return round(self.pending / (scored / elapsed), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {s.value: self.counts.get(s.value, 0) for s in ImageState},
            "total": self.total,
            "done": self.done,
            "pending": self.pending,
            "failed": self.counts.get(ImageState.FAILED.value, 0),
            "rejected": self.counts.get(ImageState.REJECTED.value, 0),
            "duplicate": self.counts.get(ImageState.DUPLICATE.value, 0),
            "flagged": self.flagged,
            "cleared": self.routes.get(Route.CLEARED.value, 0),
            "manual_review": self.routes.get(Route.MANUAL_REVIEW.value, 0),
            "progress": round(self.done / self.total, 4) if self.total else 1.0,
            "eta_seconds": self.eta_seconds(),
        }


def batch_progress(session: Session, batch_id: str) -> Progress:
    rows = session.execute(
        select(Image.state, func.count()).where(Image.batch_id == batch_id).group_by(Image.state)
    ).all()
    by_route = session.execute(
        select(Result.route, func.count(), func.min(Result.scored_at))
        .where(Result.batch_id == batch_id)
        .group_by(Result.route)
    ).all()
    firsts = [first for _, _, first in by_route if first is not None]
    return Progress(
        counts={state: n for state, n in rows},
        routes={route: int(n) for route, n, _ in by_route},
        first_scored_at=min(firsts) if firsts else None,
    )


RESULT_COLUMNS = (
    "image_id",
    "batch_name",
    "file_name",
    "specimen_id",
    "sha256",
    "state",
    "duplicate_of",
    "p_leukemia",
    "flagged",
    "route",
    "route_reason",
    "subtype",
    *SUBTYPE_COLUMNS.values(),
    "domain_distance",
    "threshold",
    "model_version",
    "model_sha256",
    "scored_at",
    "reason",
    "reason_code",
    "error",
    "review_decision",
    "review_label",
    "reviewed_by",
    "reviewed_at",
    "review_comment",
    "false_negative",
)


def iter_batch_results(
    session: Session,
    batch_id: str,
    after_id: int = 0,
    limit: int | None = None,
    states: tuple[str, ...] | None = None,
) -> Iterator[dict[str, Any]]:
    """One row per file sent, in id order, with its latest result and current review if any.

    A duplicate (a file whose bytes came earlier in the batch) shows its twin's result; the
    review is the content's, so twin and duplicate show one decision."""
    where = [Image.batch_id == batch_id, Image.id > after_id]
    if states:
        where.append(Image.state.in_(states))
    if limit is not None:
        # Bound the page in SQL by its last image id, so a page reads `limit` images, not the
        # whole batch (an image can have one result per model version, hence no plain LIMIT).
        last_id = session.scalar(
            select(func.max(Image.id)).where(
                Image.id.in_(
                    select(Image.id).where(*where).order_by(Image.id).limit(limit).scalar_subquery()
                )
            )
        )
        if last_id is None:
            return
        where.append(Image.id <= last_id)
    stmt = (
        select(Image, Batch.name, Result, ModelVersion, Review, User.name)
        .join(Batch, Batch.id == Image.batch_id)
        .outerjoin(Result, Result.image_id == func.coalesce(Image.duplicate_of_id, Image.id))
        .outerjoin(ModelVersion, ModelVersion.id == Result.model_version_id)
        .outerjoin(Review, current_review_condition())
        .outerjoin(User, User.id == Review.reviewer_id)
        .where(*where)
        .order_by(Image.id, Result.scored_at)
        .execution_options(yield_per=500)
    )
    pending: dict[str, Any] | None = None
    emitted = 0
    for image, batch_name, result, version, review, reviewer in session.execute(stmt):
        reason, reason_code = _reason(image, result)
        row = {
            "image_id": image.id,
            "batch_name": batch_name,
            "file_name": image.original_name,
            "specimen_id": image.specimen_id,
            "sha256": image.sha256,
            "state": image.state,
            "duplicate_of": image.duplicate_of_id,
            "p_leukemia": result.p_leukemia if result else None,
            "flagged": result.flagged if result else None,
            "route": result.route if result else None,
            "route_reason": result.route_reason if result else None,
            **subtype_json(result),
            "domain_distance": result.domain_distance if result else None,
            "threshold": result.threshold if result else None,
            "model_version": version.name if version else None,
            "model_sha256": version.sha256 if version else None,
            "scored_at": result.scored_at.isoformat() if result else None,
            "reason": reason,
            "reason_code": reason_code,
            "error": image.error,
            "review_decision": review.decision if review else None,
            "review_label": review.label if review else None,
            "reviewed_by": reviewer if review else None,
            "reviewed_at": review.created_at.isoformat() if review else None,
            "review_comment": review.comment if review else None,
            # Cleared by the model, leukemia by a reviewer (found in QC); null until scored.
            "false_negative": (
                not result.flagged and review is not None and review.label == LEUKEMIA
                if result
                else None
            ),
        }
        # Rows of one image are adjacent and ordered by time: keep the newest.
        if pending is not None and pending["image_id"] != row["image_id"]:
            yield pending
            emitted += 1
            if limit is not None and emitted >= limit:
                return
        pending = row
    if pending is not None:
        yield pending


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """An ``iter_batch_results`` row with the columns of ``RESULT_COLUMNS``: the subtype
    probabilities spread over their own columns (empty when there are none)."""
    flat = {k: v for k, v in row.items() if k != "subtype_probs"}
    probs = row["subtype_probs"] or {}
    return flat | {column: probs.get(s) for s, column in SUBTYPE_COLUMNS.items()}


def _reason(image: Image, result: Result | None) -> tuple[str | None, str | None]:
    """Why a file has no plain flagged/cleared verdict, in words and as a code: the intake's
    refusal, the twin it repeats, the scoring failure, or why the model cannot judge it."""
    if image.state == ImageState.REJECTED.value:
        return image.error, image.reason_code or REJECTED
    if image.state == ImageState.DUPLICATE.value:
        return image.error, DUPLICATE
    if image.state == ImageState.FAILED.value:
        return f"could not be scored: {image.error or 'unknown error'}", SCORING_FAILED
    if result is not None and result.route_reason:
        return REASON_TEXT.get(result.route_reason, result.route_reason), result.route_reason
    return None, None


def _list_rank() -> Any:
    """The batch page's order: what needs a person first (flagged, then manual review), then
    failures, cleared images, work still pending, and files that were never scored."""
    return case(
        (Result.route == Route.FLAGGED.value, 0),
        (Result.route == Route.MANUAL_REVIEW.value, 1),
        (Image.state == ImageState.FAILED.value, 2),
        (Result.route == Route.CLEARED.value, 3),
        (Image.state.in_(PENDING), 4),
        (Image.state == ImageState.DUPLICATE.value, 5),
        else_=6,
    )


def parse_list_cursor(raw: str | None) -> tuple[int, int] | None:
    """The batch image list's cursor, ``rank:image_id`` (``batch_images``' ``next``)."""
    if not raw:
        return None
    try:
        rank, image_id = (int(part) for part in raw.split(":", 1))
    except ValueError:
        raise Invalid(f"bad cursor {raw!r}: rank:image_id") from None
    if not (0 <= rank <= 6 and 0 <= image_id < 2**63):
        raise Invalid(f"bad cursor {raw!r}: rank:image_id")
    return rank, image_id


def batch_images(
    session: Session, batch_id: str, after: tuple[int, int] | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a batch's files for its page, flagged and manual review first
    (``_list_rank``), keyset-paged on (rank, image id); the next page's cursor or None.

    Each page sorts the batch's rows by rank: bounded by one batch, unlike the review queue,
    which walks an index across every batch."""
    rank = _list_rank().label("rank")
    twin = aliased(Image)
    stmt = (
        select(Image, Result, Review, twin.original_name, rank)
        .select_from(Image)
        .outerjoin(twin, twin.id == Image.duplicate_of_id)
        .outerjoin(
            Result,
            and_(
                Result.image_id == func.coalesce(Image.duplicate_of_id, Image.id),
                latest_result_condition(),
            ),
        )
        .outerjoin(Review, current_review_condition())
        .where(Image.batch_id == batch_id)
    )
    if after is not None:
        stmt = stmt.where(tuple_(_list_rank(), Image.id) > tuple_(*after))
    rows = session.execute(stmt.order_by(rank, Image.id).limit(limit + 1)).all()
    items = []
    for image, result, review, twin_name, _ in rows[:limit]:
        reason, reason_code = _reason(image, result)
        items.append(
            {
                "image_id": image.id,
                "file_name": image.original_name,
                "state": image.state,
                "duplicate_of": image.duplicate_of_id,
                "duplicate_of_file": twin_name,
                "has_image": image.storage_key is not None and image.purged_at is None,
                "p_leukemia": result.p_leukemia if result else None,
                "route": result.route if result else None,
                **subtype_json(result),
                "heatmap_url": heatmap_url(image.id, result.heatmap_key if result else None),
                "reason": reason,
                "reason_code": reason_code,
                "review_decision": review.decision if review else None,
                "review_label": review.label if review else None,
            }
        )
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = f"{last.rank}:{last.Image.id}"
    return items, cursor


def batch_specimen_ids(session: Session, batch_id: str) -> list[str]:
    """The specimens with an image in the batch, in order."""
    return [
        str(s)
        for s in session.scalars(
            select(Image.specimen_id)
            .where(Image.batch_id == batch_id, Image.specimen_id.is_not(None))
            .distinct()
            .order_by(Image.specimen_id)
        )
    ]
