"""Celery tasks: small, idempotent, carrying image ids only (state is read from SQL)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from billiard import current_process
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from db.lifecycle import fail_unfinished, scoring_pending
from db.models import DeliveryState
from db.retention import purge_old_images
from leukoscreen import logs, metrics
from leukoscreen.storage import StorageUnavailable
from model.precision import version_name
from worker import heartbeat
from worker.celery_app import (
    EXPLAIN_QUEUE,
    EXPLAIN_TASK,
    PURGE_TASK,
    RECONCILE_TASK,
    SCORE_TASK,
    WEBHOOK_TASK,
    app,
)
from worker.dispatch import enqueue_heatmaps, enqueue_images
from worker.explain import explain_chunk
from worker.reconcile import reconcile as reconcile_images
from worker.runtime import reset_runtime, runtime, worker_settings
from worker.scoring import score_chunk, split_for_retry
from worker.webhooks import backoff_s, deliver

log = logging.getLogger(__name__)

# Database, broker or object-store hiccups are worth retrying; anything else is a bug or a bad
# image.
TRANSIENT = (OperationalError, DBAPIError, ConnectionError, TimeoutError, StorageUnavailable)
MAX_RETRIES = 5
# With the embedded broker, a heatmap task that finds scoring still pending comes back this
# much later (``explain_images``).
EXPLAIN_DEFER_S = 10


@worker_process_init.connect
def _pin_gpu(**_: object) -> None:
    """One process per GPU: child i sees only GPU i, before TensorFlow is ever imported."""
    reset_runtime()
    gpus = worker_settings().gpu_count
    if gpus > 0:
        index = (current_process().index or 0) % gpus
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
        os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"


@worker_init.connect
def _remember_identity(sender: object, **_: object) -> None:
    """In the Celery parent, after -Q was applied: what every pool process will report."""
    concurrency = getattr(sender, "concurrency", 1)
    heartbeat.IDENTITY.node = str(getattr(sender, "hostname", "") or "")
    heartbeat.IDENTITY.queues = sorted(sender.app.amqp.queues.consume_from)  # type: ignore[attr-defined]
    heartbeat.IDENTITY.concurrency = concurrency if isinstance(concurrency, int) else 1


def _loaded_model() -> tuple[str, str] | None:
    # Never loads it: a process that has not scored yet reports no model rather than
    # spending seconds (and TensorFlow's memory) to say which one it would load.
    rt = runtime()
    if "model" not in rt.__dict__:
        return None
    return version_name(rt.model.card.name, rt.model.precision), rt.model.sha256


@worker_process_init.connect
def _start_heartbeat(**_: object) -> None:
    settings = worker_settings()
    heartbeat.start(
        heartbeat.Heartbeat(
            runtime().sessions,
            heartbeat.IDENTITY,
            settings.hostname,
            settings.heartbeat_every_s,
            _loaded_model,
        )
    )


@worker_process_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    heartbeat.stop()


_log_tokens: dict[str, logs.Token] = {}


@task_prerun.connect
def _bind_log_context(task_id: str, task: object, args: tuple = (), **_: object) -> None:
    """The request and batch the task came from (message headers), and its images, on every
    line logged while it runs."""
    fields = logs.from_task_request(getattr(task, "request", None))
    if getattr(task, "name", "") in (SCORE_TASK, EXPLAIN_TASK) and args:
        fields.update(logs.image_ids(list(args[0])))
    _log_tokens[task_id] = logs.bind(task_id=task_id, **fields)
    if (beat := heartbeat.current()) is not None:
        beat.task_started()


@task_postrun.connect
def _task_finished(task_id: str, retval: object = None, **_: object) -> None:
    """Whatever the outcome (a retry or an error too): the process is idle again."""
    token = _log_tokens.pop(task_id, None)
    if token is not None:
        logs.unbind(token)
    if (beat := heartbeat.current()) is not None:
        scored = retval.get("scored", 0) if isinstance(retval, dict) else 0
        beat.task_done(int(scored))


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
        with metrics.CHUNK_SECONDS.time():
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
    log.info(
        "chunk done: %d scored, %d failed, %d already done",
        outcome.scored,
        outcome.failed,
        outcome.skipped,
    )
    if outcome.to_person:
        # The heatmaps of the images a person will look at, made once scoring is idle.
        enqueue_heatmaps(app, outcome.to_person, rt.settings.chunk_size)
    return asdict(outcome)


@app.task(name=EXPLAIN_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True)
def explain_images(self, image_ids: list[int]) -> dict[str, object]:
    """Grad-CAM heatmaps of the images among ``image_ids`` whose result of this worker's model
    goes to a person (``worker.explain``). Idempotent; nothing is marked failed: what is
    still missing after the retries, the reconciler asks for again."""
    rt = runtime()
    if rt.settings.uses_filesystem_broker and scoring_pending(rt.sessions):
        # The embedded broker (``serve`` without Redis) hands out its queues in turn, not in
        # the worker's order: wait until scoring is done rather than slow the bulk path.
        app.send_task(
            EXPLAIN_TASK, args=[image_ids], queue=EXPLAIN_QUEUE, countdown=EXPLAIN_DEFER_S
        )
        return {"deferred": len(image_ids)}
    try:
        outcome = explain_chunk(
            rt.sessions, rt.store, rt.model, rt.version_id, image_ids, rt.decode_pool
        )
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            log.error("heatmaps not made after %d retries: %s", self.request.retries, exc)
            raise
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc
    if outcome.made or outcome.failed:
        log.info(
            "heatmaps: %d made (%.1f ms an image), %d failed, %d not wanted",
            outcome.made,
            outcome.seconds_per_image * 1000,
            outcome.failed,
            outcome.skipped,
        )
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
