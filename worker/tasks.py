"""Celery tasks: small, idempotent, carrying image ids only (state is read from SQL)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from billiard import current_process
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError, OperationalError

from db.lifecycle import fail_unfinished
from worker.celery_app import RECONCILE_TASK, SCORE_TASK, app
from worker.reconcile import reconcile as reconcile_images
from worker.runtime import reset_runtime, runtime, worker_settings
from worker.scoring import score_chunk

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
