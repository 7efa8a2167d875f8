"""Batch intake, progress and results: the JSON API under /api/v1."""

from __future__ import annotations

import csv
import io
import json
import logging
import mimetypes
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context, url_for
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api import context, idempotency
from api.auth import actor
from api.errors import ApiError, get_or_404
from api.intake import FileOutcome, Intake
from api.params import int_arg
from api.workers import current_stall
from db import drift, lifecycle
from db.audit import record_event
from db.errors import NotFound
from db.models import Batch, Image, ImageState
from db.progress import RESULT_COLUMNS, batch_progress, iter_batch_results
from db.reviews import decision_counts
from leukoscreen import logs, metrics
from leukoscreen.imagetypes import MIME_TYPES
from worker.celery_app import PRIORITY_QUEUE
from worker.dispatch import enqueue_images

bp = Blueprint("batches", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


def _text(value: str, limit: int = 255) -> str:
    """Form text as sent, minus the NUL characters PostgreSQL cannot store."""
    return value.replace("\x00", "\ufffd")[:limit]


def _submitter() -> str:
    return _text(
        request.form.get("submitted_by") or request.headers.get("X-Submitted-By") or actor().name
    )


def _outcome_json(o: FileOutcome, image_id: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"file": o.name, "status": o.status}
    if image_id is not None:
        body["image_id"] = image_id
    if o.sha256:
        body["sha256"] = o.sha256
    if o.reason:
        body["reason"] = o.reason
    return body


def _uploads() -> list[tuple[str, Any]]:
    files = request.files.getlist("images") + request.files.getlist("archive")
    if not files:
        other = sorted(request.files.keys())
        hint = f" (got file fields {other})" if other else ""
        raise ApiError(400, f"no files: send them as multipart form field 'images'{hint}")
    return [(f.filename or "unnamed", f.stream) for f in files]


def _answer(body: dict[str, Any], replayed: bool = False) -> tuple[Response, int]:
    response = jsonify(body)
    response.headers["Location"] = url_for("batches.get_batch", batch_id=body["batch_id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def _intake(batch: Batch | None, name: str | None) -> tuple[Response, int]:
    key = idempotency.request_key()
    uploads = _uploads()
    sent = idempotency.fingerprint(uploads)
    if key is not None and (first := idempotency.first_answer(key, sent)) is not None:
        return _answer(first, replayed=True)
    settings, sessions = context.settings(), context.sessions()
    known: dict[str, str] = {}
    if batch is not None:
        with sessions() as session:
            known = dict(
                session.execute(
                    select(Image.sha256, Image.original_name).where(
                        Image.batch_id == batch.id, Image.state != ImageState.REJECTED.value
                    )
                ).all()
            )
    intake = Intake(settings, context.store(), known)
    try:
        return _check_and_record(intake, uploads, batch, name, key, sent)
    except IntegrityError:
        # A copy of this request with the same key committed first: answer as it did.
        _remove_unrecorded(intake.created)
        first = idempotency.first_answer(key, sent) if key is not None else None
        if first is None:
            raise
        return _answer(first, replayed=True)
    except BaseException:
        _remove_unrecorded(intake.created)
        raise


def _remove_unrecorded(keys: list[str]) -> None:
    """Delete the originals a failed request stored, unless some image row records them."""
    if not keys:
        return
    try:
        with context.sessions()() as session:
            recorded = set(
                session.scalars(select(Image.storage_key).where(Image.storage_key.in_(keys)))
            )
    except Exception:  # the database is down: keep the files rather than guess
        log.exception("cannot check which stored files a failed upload left")
        return
    for key in set(keys) - recorded:
        context.store().remove(key)


def _check_and_record(
    intake: Intake,
    uploads: list[tuple[str, Any]],
    batch: Batch | None,
    name: str | None,
    key: str | None,
    sent: str,
) -> tuple[Response, int]:
    settings, sessions = context.settings(), context.sessions()
    for filename, stream in uploads:
        intake.add_upload(filename, stream)
    report = intake.report

    accepted = [o for o in report.outcomes if o.status == "accepted"]
    # A new batch needs one usable image; a part added to an existing batch is recorded even
    # when every file is rejected, so that the batch's export gives the reason for each file.
    metrics.INTAKE_BYTES.inc(request.content_length or 0)
    for status in ("accepted", "rejected", "duplicate"):
        metrics.INTAKE_FILES.labels(status).inc(report.count(status))
    if not accepted and batch is None:
        metrics.INTAKE_REQUESTS.labels("unusable").inc()
        raise ApiError(
            422,
            "no usable image in the request",
            files=[_outcome_json(o, None) for o in report.outcomes],
        )

    context.store().flush()
    now = datetime.now(UTC)
    new_batch = batch is None
    with sessions.begin() as session:
        if batch is None:
            batch = Batch(
                name=_text(name or f"batch {now:%Y-%m-%d %H:%M:%S}"),
                submitted_by=_submitter(),
                created_at=now,
            )
            session.add(batch)
        else:
            batch = session.merge(batch)
            if accepted:  # a part of only rejected or duplicate files leaves the state alone
                lifecycle.reopen_batch(batch)
        images: list[tuple[FileOutcome, Image | None]] = []
        for o in report.outcomes:
            if o.status == "duplicate":
                images.append((o, None))
                continue
            image = lifecycle.admit(
                session,
                batch,
                accepted=o.status == "accepted",
                now=now,
                sha256=o.sha256 or "",
                # PostgreSQL text cannot hold NUL; keep the rest of the name as sent.
                original_name=_text(o.name, 1024),
                storage_key=o.storage_key if o.status == "accepted" else None,
                size_bytes=o.size,
                width=o.width,
                height=o.height,
                format=o.format,
                error=o.reason,
            )
            images.append((o, image))
        session.flush()
        batch_id = batch.id
        record_event(
            session,
            actor(),
            "batch.upload",
            f"batch:{batch_id}",
            accepted=len(accepted),
            rejected=report.count("rejected"),
            duplicate=report.count("duplicate"),
        )
        queued_ids = [img.id for o, img in images if img is not None and o.status == "accepted"]
        body: dict[str, Any] = {
            "batch_id": batch_id,
            "accepted": len(accepted),
            "rejected": report.count("rejected"),
            "duplicate": report.count("duplicate"),
            "enqueued": 0,
            "files": [_outcome_json(o, img.id if img else None) for o, img in images],
        }
        remembered = idempotency.remember(session, key, sent, body) if key is not None else None

    # Enqueue only after the commit: a worker must find the rows it is told about. The batch
    # id goes on this request's lines and, in the task headers, on the workers'.
    # A new small batch (a /single image) takes the priority lane; a part added to a batch
    # is bulk work, however small the part.
    small = new_batch and len(queued_ids) <= settings.priority_max_images
    queue = PRIORITY_QUEUE if small else settings.default_queue
    with logs.bound(batch_id=batch_id):
        enqueued = enqueue_images(
            context.celery(), sessions, queued_ids, settings.chunk_size, queue
        )
        log.info(
            "upload recorded: %d accepted, %d rejected, %d duplicate, %d enqueued on %s",
            len(accepted),
            report.count("rejected"),
            report.count("duplicate"),
            enqueued,
            queue,
            extra=logs.image_ids(queued_ids),
        )
    body["enqueued"] = enqueued
    if enqueued < len(queued_ids):
        body["note"] = (
            "broker unavailable: images are stored and will be queued automatically when it is back"
        )
    if remembered is not None:
        idempotency.complete(remembered, body)
    metrics.INTAKE_REQUESTS.labels("accepted").inc()
    return _answer(body)


@bp.post("/batches")
def create_batch():
    return _intake(None, request.form.get("name"))


def _load_batch(batch_id: str) -> Batch:
    with context.sessions()() as session:
        return get_or_404(session, Batch, batch_id)


@bp.post("/batches/<batch_id>/images")
def add_to_batch(batch_id: str):
    return _intake(_load_batch(batch_id), None)


def _batch_json(batch: Batch) -> dict[str, Any]:
    with context.sessions()() as session:
        progress = batch_progress(session, batch.id)
        reviews = decision_counts(session, batch.id)
        # Only pending work can stall; a finished batch reads no heartbeats.
        stall = current_stall(session, datetime.now(UTC)) if progress.pending else None
    return {
        "id": batch.id,
        "name": batch.name,
        "submitted_by": batch.submitted_by,
        "created_at": batch.created_at.isoformat(),
        "state": batch.state,
        **progress.as_dict(),
        "drift": batch.drift,
        "drift_warning": drift.describe(batch.drift),
        "stalled": stall is not None,
        "stall_message": stall,
        "reviews": reviews,
        "results_url": url_for("batches.batch_results", batch_id=batch.id),
    }


@bp.get("/batches")
def list_batches():
    limit = int_arg("limit", 50, minimum=1, maximum=500)
    with context.sessions()() as session:
        batches = session.scalars(
            select(Batch).order_by(Batch.created_at.desc()).limit(limit)
        ).all()
    return jsonify(batches=[_batch_json(b) for b in batches])


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(_batch_json(_load_batch(batch_id)))


def _csv_lines(batch_id: str) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    with context.sessions()() as session:
        for row in iter_batch_results(session, batch_id):
            writer.writerow(row)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_lines(batch_id: str) -> Iterator[str]:
    yield f'{{"batch_id": {json.dumps(batch_id)}, "results": ['
    with context.sessions()() as session:
        for i, row in enumerate(iter_batch_results(session, batch_id)):
            yield ("," if i else "") + "\n" + json.dumps(row)
    yield "\n]}\n"


@bp.get("/batches/<batch_id>/results")
def batch_results(batch_id: str):
    batch = _load_batch(batch_id)
    export = request.args.get("format", "json")
    if export not in ("json", "csv"):
        raise ApiError(400, "format must be json or csv")
    after = int_arg("after_id", 0)
    limit = int_arg("limit", 1000, minimum=1, maximum=10_000)
    states = tuple(s for s in request.args.getlist("state") if s) or None
    if "format" in request.args:  # an export: the whole batch, streamed; paging unused
        lines = _csv_lines(batch.id) if export == "csv" else _json_lines(batch.id)
        mimetype = "text/csv" if export == "csv" else "application/json"
        response = Response(stream_with_context(lines), mimetype=mimetype)
        response.headers["Content-Disposition"] = (
            f'attachment; filename="batch-{batch.id}.{export}"'
        )
        return response
    with context.sessions()() as session:
        rows = list(
            iter_batch_results(session, batch.id, after_id=after, limit=limit, states=states)
        )
        total = session.scalar(
            select(func.count()).select_from(Image).where(Image.batch_id == batch.id)
        )
    body: dict[str, Any] = {"batch_id": batch.id, "total": total, "results": rows}
    if len(rows) == limit:
        body["next_after_id"] = rows[-1]["image_id"]
    return jsonify(body)


@bp.get("/images/<int:image_id>")
def get_image(image_id: int):
    with context.sessions()() as session:
        image = get_or_404(session, Image, image_id)
        if image.storage_key is None:
            raise NotFound(f"image {image_id} was rejected and not stored: {image.error}")
    path = context.store().path_for(image.storage_key)
    # Served with the type Pillow detected, never guessed from the uploaded name.
    mimetype = MIME_TYPES.get(image.format or "", "application/octet-stream")
    ext = mimetypes.guess_extension(mimetype) or ""
    response = send_file(
        path, mimetype=mimetype, download_name=f"image-{image_id}{ext}", max_age=3600
    )
    # Patient images are behind a login: a browser may keep them, a shared proxy may not.
    response.cache_control.public = False
    response.cache_control.private = True
    return response
