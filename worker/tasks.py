"""Celery tasks: small, idempotent, carrying image ids only (state is read from SQL)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from billiard import current_process
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError, OperationalError

from db.lifecycle import fail_unfinished
from db.models import DeliveryState
from db.retention import purge_old_images
from worker.celery_app import PURGE_TASK, RECONCILE_TASK, SCORE_TASK, WEBHOOK_TASK, app
from worker.dispatch import enqueue_images
from worker.reconcile import reconcile as reconcile_images
from worker.runtime import reset_runtime, runtime, worker_settings
from worker.scoring import score_chunk, split_for_retry
from worker.webhooks import backoff_s, deliver

log = logging.getLogger(__name__)

# Database or broker hiccups are worth retrying; anything else is a bug or a bad image.
TRANSIENT = (OperationalError, DBAPIError, ConnectionError, TimeoutError)
MAX_RETRIES = 5


@worker_process_init.connect
def _pin_gpu(**_: object) -> None:
    """One process per GPU: child i sees only GPU i, before TensorFlow is ever imported."""
    reset_runtime()
    gpus = worker_settings().gpu_count
    if gpus > 0:
        index = (current_process().index or 0) % gpus
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"


@app.task(name=SCORE_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True)
def score_images(self, image_ids: list[int]) -> dict[str, int]:
    rt = runtime()
    try:
        # Poison isolation: a chunk that has lost a worker is sent again in smaller groups.
        groups = split_for_retry(
            rt.sessions, image_ids, rt.settings.chunk_size, rt.settings.max_attempts
        )
        if groups:
            # Back to the queue it came from (a GPU worker's chunk stays on the GPU queue).
            queue = (self.request.delivery_info or {}).get("routing_key")
            ids = [image_id for group in groups for image_id in group]
            enqueue_images(
                app, rt.sessions, ids, len(groups[0]), queue or rt.settings.default_queue
            )
            log.warning(
                "chunk of %d split into %d groups to isolate a poison image",
                len(image_ids),
                len(groups),
            )
            return {"split": len(groups)}
        outcome = score_chunk(
            rt.sessions,
            rt.store,
            rt.model,
            rt.version_id,
            image_ids,
            rt.settings.max_attempts,
            rt.decode_pool,
            rt.settings.hostname,
        )
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            log.error("chunk failed after %d retries: %s", self.request.retries, exc)
            try:
                fail_unfinished(rt.sessions, image_ids, f"gave up after retries: {exc}")
            except TRANSIENT:
                log.error("could not record the failure; the reconciler will retry the chunk")
            raise
        # Exponential backoff: 2, 4, 8, 16, 32 s, capped at a minute.
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc
    return asdict(outcome)


@app.task(name=RECONCILE_TASK)
def reconcile() -> dict[str, int]:
    rt = runtime()
    return asdict(reconcile_images(app, rt.sessions, rt.settings))


# The delivery row counts attempts and says when to give up (``webhook_max_attempts``), so
# Celery's own retry limit is off.
@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self, delivery_id: str) -> dict[str, object]:
    rt = runtime()
    try:
        sent = deliver(
            rt.sessions,
            rt.secret_key,
            delivery_id,
            rt.settings.webhook_timeout_s,
            rt.settings.webhook_max_attempts,
        )
    except TRANSIENT as exc:
        # The database, not the receiver: try again soon (the row still says what is left).
        raise self.retry(exc=exc, countdown=backoff_s(1)) from exc
    if sent.state is DeliveryState.PENDING:
        raise self.retry(countdown=backoff_s(sent.attempt))
    return {"state": sent.state.value if sent.state else None, "attempt": sent.attempt}


@app.task(name=PURGE_TASK)
def purge_images() -> dict[str, object]:
    rt = runtime()
    return asdict(purge_old_images(rt.sessions, rt.store, rt.settings.retain_images_days, None))
