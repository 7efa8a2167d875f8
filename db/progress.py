"""Batch progress and result listings, derived from image states in SQL (never from Celery)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.lifecycle import PENDING
from db.models import Image, ImageState, ModelVersion, Result, Review, User
from db.reviews import LEUKEMIA, WITHDRAWN, latest_review_condition
from model.gate import Route


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
    "file_name",
    "sha256",
    "state",
    "p_leukemia",
    "flagged",
    "route",
    "route_reason",
    "domain_distance",
    "threshold",
    "model_version",
    "model_sha256",
    "scored_at",
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
    """One row per image in id order, with its latest result and current review if any."""
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
        select(Image, Result, ModelVersion, Review, User.name)
        .outerjoin(Result, Result.image_id == Image.id)
        .outerjoin(ModelVersion, ModelVersion.id == Result.model_version_id)
        .outerjoin(Review, latest_review_condition())
        .outerjoin(User, User.id == Review.reviewer_id)
        .where(*where)
        .order_by(Image.id, Result.scored_at)
        .execution_options(yield_per=500)
    )
    pending: dict[str, Any] | None = None
    emitted = 0
    for image, result, version, latest, reviewer in session.execute(stmt):
        # An undone decision (withdrawn) leaves the image with no current decision.
        review = latest if latest is not None and latest.decision != WITHDRAWN else None
        row = {
            "image_id": image.id,
            "file_name": image.original_name,
            "sha256": image.sha256,
            "state": image.state,
            "p_leukemia": result.p_leukemia if result else None,
            "flagged": result.flagged if result else None,
            "route": result.route if result else None,
            "route_reason": result.route_reason if result else None,
            "domain_distance": result.domain_distance if result else None,
            "threshold": result.threshold if result else None,
            "model_version": version.name if version else None,
            "model_sha256": version.sha256 if version else None,
            "scored_at": result.scored_at.isoformat() if result else None,
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
