"""Signalling work to the queue. The database already holds every image; this only nudges."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import OUTBOX, mark_enqueued
from leukoscreen import logs, metrics
from worker.celery_app import (
    EXPLAIN_QUEUE,
    EXPLAIN_TASK,
    SCORE_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
)

log = logging.getLogger(__name__)

# Publishing must fail fast when the broker is down: the images are safe in SQL and the
# reconciler will enqueue them later, so an upload must not hang waiting for Redis.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def chunked(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _publish(celery: Celery, task: str, payloads: Sequence[Any], queue: str, what: str) -> int:
    """Send one ``task`` per payload; returns how many were sent: all, or those before a
    broker error (the rest are the reconciler's, which finds their rows still waiting)."""
    sent = 0
    try:
        for payload in payloads:
            celery.send_task(
                task,
                args=[payload],
                queue=queue,
                retry=True,
                retry_policy=PUBLISH_RETRY,
                # The request and batch this work came from, for the worker's log lines.
                headers=logs.task_headers(),
            )
            sent += 1
    except Exception as exc:  # kombu raises many transport-specific types
        log.warning(
            "broker unavailable, %d of %d %s tasks left for the reconciler: %s",
            len(payloads) - sent,
            len(payloads),
            what,
            exc,
        )
    return sent


def enqueue_images(
    celery: Celery,
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    chunk_size: int,
    queue: str,
) -> int:
    """Send score tasks in chunks; returns how many images were enqueued (0: broker down)."""
    chunks = chunked(image_ids, chunk_size)
    published = _publish(celery, SCORE_TASK, chunks, queue, "scoring")
    sent = [image_id for chunk in chunks[:published] for image_id in chunk]
    if sent:
        mark_enqueued(sessions, sent)
        metrics.ENQUEUED.labels(queue).inc(len(sent))
    return len(sent)


def enqueue_heatmaps(celery: Celery, image_ids: Sequence[int], chunk_size: int) -> int:
    """Ask for the heatmaps of these scored images (``worker.explain``), in chunks; returns how
    many ids were sent. A broker outage is not an error: the reconciler asks again later."""
    chunks = chunked(image_ids, chunk_size)
    published = _publish(celery, EXPLAIN_TASK, chunks, EXPLAIN_QUEUE, "heatmap")
    return sum(len(chunk) for chunk in chunks[:published])


def enqueue_deliveries(celery: Celery, delivery_ids: Sequence[str]) -> int:
    """Send one delivery task per id; returns how many were sent (the rest: reconciler's)."""
    return _publish(celery, WEBHOOK_TASK, list(delivery_ids), WEBHOOK_QUEUE, "webhook delivery")


def watch_outbox(sessions: sessionmaker[Session], celery: Celery) -> None:
    """Enqueue the webhook deliveries a transaction of ``sessions`` wrote (``db.lifecycle.emit``)
    once it has committed: a task never looks for a row that is not there yet, and a rolled
    back event sends nothing."""

    @event.listens_for(sessions, "after_commit")
    def _send(session: Session) -> None:
        ids = session.info.pop(OUTBOX, None)
        if ids:
            enqueue_deliveries(celery, ids)

    @event.listens_for(sessions, "after_rollback")
    def _drop(session: Session, *_: Any) -> None:
        session.info.pop(OUTBOX, None)
