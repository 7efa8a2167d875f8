"""Signalling work to the queue. The database already holds every image; this only nudges."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.lifecycle import mark_enqueued
from leukoscreen import logs, metrics
from worker.celery_app import SCORE_TASK

log = logging.getLogger(__name__)

# Publishing must fail fast when the broker is down: the images are safe in SQL and the
# reconciler will enqueue them later, so an upload must not hang waiting for Redis.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def chunked(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def enqueue_images(
    celery: Celery,
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    chunk_size: int,
    queue: str,
) -> int:
    """Send score tasks in chunks; returns how many images were enqueued (0: broker down)."""
    sent: list[int] = []
    try:
        for chunk in chunked(image_ids, chunk_size):
            celery.send_task(
                SCORE_TASK,
                args=[chunk],
                queue=queue,
                retry=True,
                retry_policy=PUBLISH_RETRY,
                # The request and batch this work came from, for the worker's log lines.
                headers=logs.task_headers(),
            )
            sent.extend(chunk)
    except Exception as exc:  # kombu raises many transport-specific types
        log.warning(
            "broker unavailable, %d images left for the reconciler: %s",
            len(image_ids) - len(sent),
            exc,
        )
    if sent:
        mark_enqueued(sessions, sent)
        metrics.ENQUEUED.labels(queue).inc(len(sent))
    return len(sent)
