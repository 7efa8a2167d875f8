"""The service's state as an operator measures it, read from SQL at scrape time.

These numbers come from the database, not from counters in processes, so they are true
however many API and worker processes run and survive every restart. Each is one indexed
query (image by state and updated_at, result by scored_at, review by image).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from db.models import Batch, BatchState, Image, ImageState, Result, Review
from db.workers import oldest_age_s

RECENT = timedelta(hours=1)


@dataclass(frozen=True)
class ServiceState:
    images_by_state: dict[str, int]
    oldest_queued_age_s: float | None
    oldest_scoring_age_s: float | None
    batches_in_progress: int
    # Results written in the last hour, by route (flagged, cleared, manual_review).
    recent_routes: dict[str, int]
    review_backlog: int  # images sent to a person (flagged or manual review) nobody decided
    review_backlog_oldest_age_s: float | None

    def recent_share(self, route: str) -> float | None:
        total = sum(self.recent_routes.values())
        return self.recent_routes.get(route, 0) / total if total else None


def service_state(session: Session, now: datetime) -> ServiceState:
    states = {
        state: n
        for state, n in session.execute(select(Image.state, func.count()).group_by(Image.state))
    }
    routes = {
        route: n
        for route, n in session.execute(
            select(Result.route, func.count())
            .where(Result.scored_at >= now - RECENT)
            .group_by(Result.route)
        )
    }
    undecided = ~exists().where(Review.image_id == Result.image_id)
    backlog, oldest = session.execute(
        select(func.count(func.distinct(Result.image_id)), func.min(Result.scored_at)).where(
            Result.flagged.is_(True), undecided
        )
    ).one()
    return ServiceState(
        images_by_state={s.value: int(states.get(s.value, 0)) for s in ImageState},
        oldest_queued_age_s=oldest_age_s(session, ImageState.QUEUED, now),
        oldest_scoring_age_s=oldest_age_s(session, ImageState.SCORING, now),
        batches_in_progress=int(
            session.scalar(
                select(func.count()).select_from(Batch).where(Batch.state == BatchState.SCORING)
            )
            or 0
        ),
        recent_routes={str(r): int(n) for r, n in routes.items()},
        review_backlog=int(backlog or 0),
        review_backlog_oldest_age_s=(
            round((now - oldest).total_seconds(), 1) if oldest is not None else None
        ),
    )
