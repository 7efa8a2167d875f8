"""Which workers are alive, read from their heartbeats in SQL (``db/workers.py``).

The API never asks Celery: workers may run on other hosts behind another broker connection,
and a broker that answers says nothing about whether anyone consumes a queue.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, g, jsonify
from sqlalchemy.orm import Session

from api import context
from api.auth import require_global_admin
from db.models import ImageState
from db.workers import WorkerView, list_workers, oldest_age_s, queue_presence, stall_message
from worker.celery_app import EXPLAIN_QUEUE, PRIORITY_QUEUE, RECONCILE_QUEUE

bp = Blueprint("workers", __name__, url_prefix="/api/v1")


def scoring_queues() -> list[str]:
    """The queues this API sends scoring tasks to: their consumers decide whether work moves."""
    settings = context.settings()
    lane = [PRIORITY_QUEUE] if settings.priority_max_images > 0 else []
    return [settings.default_queue, *lane]


def known_workers(session: Session, now: datetime) -> list[WorkerView]:
    return list_workers(session, now, context.settings().worker_stale_s)


def current_stall(session: Session, now: datetime) -> str | None:
    """Why queued scoring work is not moving, or None; ask only when work is pending.

    Once per request: the batch list asks for each of its pending batches.
    """
    if "stall" not in g:
        queues = scoring_queues()
        presence = queue_presence(known_workers(session, now), queues)
        waited = oldest_age_s(session, ImageState.QUEUED, now)
        g.stall = stall_message(presence, queues, now, context.settings().stall_after_s, waited)
    return g.stall


def may_explain(session: Session, now: datetime, model_version: str) -> bool:
    """Whether a live worker process that makes heatmaps runs this model version, or may (a
    process loads its model on its first task, and says which only then). A heatmap shows
    what the network that scored the image looked at, so only such a worker makes it."""
    return any(
        not w.stale and EXPLAIN_QUEUE in w.queues and w.model_version in (None, model_version)
        for w in known_workers(session, now)
    )


def presence_json(workers: list[WorkerView], now: datetime) -> dict[str, Any]:
    """Live processes and hosts per queue, the API's scoring queues and the reconciler's
    always listed (with 0 when nobody consumes them)."""
    queues = [*scoring_queues(), RECONCILE_QUEUE]
    return {
        queue: {
            "processes": p.processes,
            "hosts": len(p.hosts),
            "last_beat_age_s": (
                round((now - p.last_beat_at).total_seconds(), 1) if p.last_beat_at else None
            ),
        }
        for queue, p in queue_presence(workers, queues).items()
    }


@bp.get("/workers")
@require_global_admin()
def workers():
    now = datetime.now(UTC)
    with context.sessions()() as session:
        found = known_workers(session, now)
    return jsonify(
        workers=[w.as_dict(now) for w in found],
        queues=presence_json(found, now),
        stale_after_s=context.settings().worker_stale_s,
    )
