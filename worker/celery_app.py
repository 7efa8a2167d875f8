"""The one Celery application. Importing it never imports TensorFlow (the API imports it)."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from leukoscreen.config import Settings, load_settings

SCORE_TASK = "worker.tasks.score_images"
RECONCILE_TASK = "worker.tasks.reconcile"
# The reconciler has a queue of its own: behind a scoring backlog on cpu/gpu its runs would
# wait (and expire) exactly when it is needed. `serve`, compose's `reconciler` and
# `leukoscreen worker --queue reconcile` consume it.
RECONCILE_QUEUE = "reconcile"
WEBHOOK_TASK = "worker.tasks.deliver_webhook"
PURGE_TASK = "worker.tasks.purge_images"
# Webhook sends wait on other servers: a queue of their own, consumed beside the reconciler's
# (no model loaded), keeps a slow receiver from holding up scoring.
WEBHOOK_QUEUE = "webhooks"
# One-image requests and small batches (LEUKOSCREEN_PRIORITY_MAX_IMAGES): every scoring worker
# consumes it before its own queue, so /single waits for one chunk at most, not a backlog.
PRIORITY_QUEUE = "priority"
EXPLAIN_TASK = "worker.tasks.explain_images"
# Explanation heatmaps (``model.explain``) of scored images that go to a person: they need the
# model, so scoring workers consume this queue, last of all theirs (``leukoscreen worker``),
# and a bulk backlog is scored before any heatmap is made.
EXPLAIN_QUEUE = "explain"
QUEUES = ("cpu", "gpu", PRIORITY_QUEUE, RECONCILE_QUEUE, WEBHOOK_QUEUE, EXPLAIN_QUEUE)
# Retention is checked hourly; a run with nothing old enough does nothing.
PURGE_EVERY_S = 3600


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    if settings.uses_filesystem_broker:
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        (settings.broker_dir / "processed").mkdir(exist_ok=True)
    app = Celery("leukoscreen", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        # Results live in SQL; Celery's result backend would be a second, weaker copy.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # A task is acknowledged only after it finished, and re-queued if its process dies,
        # so a killed worker never loses a chunk (scoring is idempotent, see worker.tasks).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Queues hang off the default (anonymous) exchange, so a message goes straight to its
        # queue by name. Redis keeps exchange bindings as keys: after a FLUSHALL, messages
        # published through a named exchange were silently dropped until workers restarted.
        task_queues=[Queue(name, Exchange(""), routing_key=name) for name in QUEUES],
        task_default_queue=settings.default_queue,
        task_routes={
            RECONCILE_TASK: {"queue": RECONCILE_QUEUE},
            PURGE_TASK: {"queue": RECONCILE_QUEUE},
            WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
            EXPLAIN_TASK: {"queue": EXPLAIN_QUEUE},
        },
        broker_transport_options=settings.broker_transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile-stale-images": {
                "task": RECONCILE_TASK,
                "schedule": float(settings.reconcile_every_s),
                "options": {"queue": RECONCILE_QUEUE, "expires": settings.reconcile_every_s},
            },
            "purge-old-image-pixels": {
                "task": PURGE_TASK,
                "schedule": float(PURGE_EVERY_S),
                "options": {"queue": RECONCILE_QUEUE, "expires": PURGE_EVERY_S},
            },
        },
        timezone="UTC",
    )
    return app


app = make_celery()
