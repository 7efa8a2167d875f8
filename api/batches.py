"""Batch intake, progress and results: the JSON API under /api/v1."""

from __future__ import annotations

import io
import json
import logging
import mimetypes
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from defusedcsv import csv as defused_csv
from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context, url_for
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import context, idempotency
from api.auth import actor, require_role, scope
from api.errors import ApiError
from api.intake import FileOutcome, Intake
from api.params import MAX_SMALL_ID, int_arg
from api.specimen_ids import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Specimen,
    SpecimenError,
    assign,
    parse_manifest,
)
from api.thumbnails import thumbnail_jpeg
from api.workers import current_stall, may_explain
from db import drift, lifecycle
from db.audit import record_event
from db.errors import Gone, NotFound
from db.models import Batch, Image, ImageState, ModelVersion, Result, Role
from db.progress import (
    RESULT_COLUMNS,
    batch_images,
    batch_progress,
    csv_row,
    iter_batch_results,
    parse_list_cursor,
)
from db.reviews import decision_counts, heatmap_url, latest_result_condition
from db.tenancy import batch_or_404, image_or_404, scoped
from leukoscreen import logs, metrics
from leukoscreen.imagetypes import MIME_TYPES
from leukoscreen.storage import ContentStore
from worker.celery_app import PRIORITY_QUEUE
from worker.dispatch import enqueue_heatmaps, enqueue_images

bp = Blueprint("batches", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


def _text(value: str, limit: int = 255) -> str:
    """Form text as sent, minus the NUL characters PostgreSQL cannot store."""
    return value.replace("\x00", "\ufffd")[:limit]


def _outcome_json(o: FileOutcome, image: Image | None) -> dict[str, Any]:
    body: dict[str, Any] = {"file": o.name, "status": o.status}
    if image is not None:
        body["image_id"] = image.id
        if image.specimen_id:
            body["specimen_id"] = image.specimen_id
        if image.duplicate_of_id is not None:
            body["duplicate_of"] = image.duplicate_of_id
    if o.sha256:
        body["sha256"] = o.sha256
    if o.reason:
        body["reason"] = o.reason
        body["reason_code"] = o.code
    return body


def _is_manifest(name: str) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower() == MANIFEST_NAME


def _uploads() -> tuple[list[tuple[str, Any]], list[Any]]:
    """The request's files, and which of their streams are specimen manifests.

    A manifest is the ``manifest`` field's file, or a ``manifest.csv`` sent among the images.
    """
    fields = request.files.getlist("images") + request.files.getlist("archive")
    named = request.files.getlist("manifest")
    if all(_is_manifest(f.filename or "") for f in fields):  # no image sent, manifests aside
        other = sorted(request.files.keys())
        hint = f" (got file fields {other})" if other else ""
        raise ApiError(400, f"no files: send them as multipart form field 'images'{hint}")
    manifests = named + [f for f in fields if _is_manifest(f.filename or "")]
    return [(f.filename or "unnamed", f.stream) for f in fields + named], [
        f.stream for f in manifests
    ]


def _specimens(intake: Intake, manifests: list[bytes]) -> dict[str, Specimen]:
    """Each file's specimen, or a 422 listing every problem (nothing is recorded then)."""
    outcomes = intake.report.outcomes
    try:
        if intake.manifest_problems:
            raise SpecimenError(intake.manifest_problems)
        if len(manifests) > 1:
            raise SpecimenError([f"{len(manifests)} manifests sent: send one {MANIFEST_NAME}"])
        return assign(
            [o.name for o in outcomes],
            archives=intake.archives,
            manifest=parse_manifest(manifests[0]) if manifests else None,
            folders=request.form.get("specimen_folders", "").lower() in ("1", "true", "yes"),
            upload_id=request.form.get("specimen_id") or None,
            # A rejected file is answered with its reason whether or not it has an id.
            required={o.name for o in outcomes if o.status != "rejected"},
        )
    except SpecimenError as exc:
        raise ApiError(
            422,
            "the specimen identities of this upload are unusable: nothing was recorded",
            problems=exc.problems,
            files=[_outcome_json(o, None) for o in outcomes],
        ) from None


def _answer(body: dict[str, Any], replayed: bool = False) -> tuple[Response, int]:
    response = jsonify(body)
    response.headers["Location"] = url_for("batches.get_batch", batch_id=body["batch_id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def _intake(batch: Batch | None, name: str | None) -> tuple[Response, int]:
    key = idempotency.request_key()
    uploads, manifest_streams = _uploads()
    sent = idempotency.fingerprint(uploads)
    if key is not None and (first := idempotency.first_answer(key, sent)) is not None:
        return _answer(first, replayed=True)
    settings, sessions = context.settings(), context.sessions()
    known: dict[str, str] = {}
    if batch is not None:
        with sessions() as session:
            known = dict(
                session.execute(
                    select(Image.sha256, Image.original_name).where(*_originals(batch.id))
                ).all()
            )
    intake = Intake(settings, context.store(), known)
    try:
        return _check_and_record(intake, uploads, manifest_streams, batch, name, key, sent)
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


def _originals(batch_id: str) -> tuple[ColumnElement[bool], ...]:
    """The batch's images that a later file with the same bytes duplicates: neither rejected
    (those bytes are checked again) nor duplicates themselves."""
    return (
        Image.batch_id == batch_id,
        Image.state.not_in((ImageState.REJECTED.value, ImageState.DUPLICATE.value)),
    )


def _twins(session: Session, batch: Batch, outcomes: list[FileOutcome]) -> dict[str, Image]:
    """The images of earlier parts that this part's duplicates repeat, by sha256."""
    wanted = {o.sha256 for o in outcomes if o.status == "duplicate" and o.sha256}
    if not wanted:
        return {}
    rows = session.scalars(
        select(Image).where(*_originals(batch.id), Image.sha256.in_(wanted)).order_by(Image.id)
    )
    twins: dict[str, Image] = {}
    for image in rows:
        twins.setdefault(image.sha256, image)
    return twins


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
    manifest_streams: list[Any],
    batch: Batch | None,
    name: str | None,
    key: str | None,
    sent: str,
) -> tuple[Response, int]:
    settings, sessions = context.settings(), context.sessions()
    manifests: list[bytes] = []
    for filename, stream in uploads:
        if any(stream is m for m in manifest_streams):
            manifests.append(stream.read(MAX_MANIFEST_BYTES + 1))
        else:
            intake.add_upload(filename, stream)
    manifests += intake.manifests
    specimens = _specimens(intake, manifests)
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
            # Who submits is who signed in: no form field or header can name someone else.
            batch = Batch(
                name=_text(name or f"batch {now:%Y-%m-%d %H:%M:%S}"),
                submitted_by=actor().name,
                laboratory_id=scope().home,
                created_at=now,
            )
            session.add(batch)
        else:
            batch = session.merge(batch)
            if accepted:  # a part of only rejected or duplicate files leaves the state alone
                lifecycle.reopen_batch(batch)
        twins = _twins(session, batch, report.outcomes)
        images: list[tuple[FileOutcome, Image]] = []
        for o in report.outcomes:
            # Every file sent gets its row: a duplicate points at its twin (and shows the
            # twin's stored copy) rather than vanishing from the batch and its exports.
            twin = twins.get(o.sha256 or "") if o.status == "duplicate" else None
            if twin is not None and twin.id is None:
                # Written before the duplicate that points at it, so that ids (and exports)
                # keep the order the files were sent in.
                session.flush()
            source = twin or o
            specimen = specimens.get(o.name)
            image = lifecycle.admit(
                session,
                batch,
                accepted=o.status == "accepted",
                now=now,
                duplicate_of=twin,
                sha256=o.sha256 or "",
                # PostgreSQL text cannot hold NUL; keep the rest of the name as sent.
                original_name=_text(o.name, 1024),
                storage_key=source.storage_key if o.status != "rejected" else None,
                size_bytes=o.size,
                width=source.width,
                height=source.height,
                format=source.format,
                error=o.reason,
                specimen_id=specimen.specimen_id if specimen else None,
                specimen_source=specimen.source or None if specimen else None,
                reason_code=o.code,
            )
            if o.status == "accepted" and o.sha256:
                twins.setdefault(o.sha256, image)
            images.append((o, image))
        session.flush()
        batch_id = batch.id
        record_event(
            session,
            actor(),
            "batch.upload",
            f"batch:{batch_id}",
            laboratory_id=batch.laboratory_id,
            accepted=len(accepted),
            rejected=report.count("rejected"),
            duplicate=report.count("duplicate"),
        )
        queued_ids = [img.id for o, img in images if o.status == "accepted"]
        body: dict[str, Any] = {
            "batch_id": batch_id,
            "accepted": len(accepted),
            "rejected": report.count("rejected"),
            "duplicate": report.count("duplicate"),
            "enqueued": 0,
            "files": [_outcome_json(o, img) for o, img in images],
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
        return batch_or_404(session, scope(), batch_id)


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
        "laboratory_id": batch.laboratory_id,
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
    # ``min_images=2`` hides the one-image batches that /single makes.
    min_images = int_arg("min_images", 0, minimum=0, maximum=MAX_SMALL_ID)
    stmt = scoped(select(Batch), scope()).order_by(Batch.created_at.desc()).limit(limit)
    if min_images:
        files = select(func.count()).where(Image.batch_id == Batch.id).scalar_subquery()
        stmt = stmt.where(files >= min_images)
    with context.sessions()() as session:
        batches = session.scalars(stmt).all()
    return jsonify(batches=[_batch_json(b) for b in batches])


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(_batch_json(_load_batch(batch_id)))


# Leading characters that make a spreadsheet run a cell as a formula or split it. defusedcsv
# neutralises = + - @ | % (numbers aside); a leading tab or carriage return is added here.
UNSAFE_LEADING_WHITESPACE = ("\t", "\r")


def _csv_cell(value: Any) -> Any:
    """One export value as the CSV shows it: the same words for booleans and one fixed-point
    form for numbers in every row (never 1e-05 beside 0.5), text made inert."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, str) and value.startswith(UNSAFE_LEADING_WHITESPACE):
        return "'" + value
    return value


def _csv_lines(batch_id: str) -> Iterator[str]:
    buffer = io.StringIO()
    writer = defused_csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    with context.sessions()() as session:
        for row in iter_batch_results(session, batch_id):
            writer.writerow({k: _csv_cell(v) for k, v in csv_row(row).items()})
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


@bp.get("/batches/<batch_id>/images")
def list_batch_images(batch_id: str):
    """The batch page's list: every file sent, what needs a person first, keyset-paged."""
    batch = _load_batch(batch_id)
    limit = int_arg("limit", 50, minimum=1, maximum=500)
    after = parse_list_cursor(request.args.get("after"))
    with context.sessions()() as session:
        items, cursor = batch_images(session, batch.id, after, limit)
    return jsonify(batch_id=batch.id, items=items, next=cursor)


def _stored(image_id: int) -> tuple[Image, str]:
    with context.sessions()() as session:
        image = image_or_404(session, scope(), image_id)
        if image.storage_key is None:
            raise NotFound(f"image {image_id} was rejected and not stored: {image.error}")
        if image.purged_at is not None:
            raise Gone(f"image purged: image {image_id}'s pixels were removed by retention")
    return image, image.storage_key


def _private(response: Response) -> Response:
    # Patient images are behind a login: a browser may keep them, a shared proxy may not.
    response.cache_control.public = False
    response.cache_control.private = True
    return response


@bp.get("/images/<int:image_id>/thumbnail")
def get_thumbnail(image_id: int):
    _, key = _stored(image_id)
    with context.store().open(key) as original:
        preview = thumbnail_jpeg(original)
    response = Response(preview, mimetype="image/jpeg")
    response.cache_control.max_age = 3600
    return _private(response)


@bp.get("/images/<int:image_id>/heatmap")
def get_heatmap(image_id: int):
    """The explanation overlay (``model.explain``) of the image's newest result: a PNG at the
    network's input size, transparent where the network did not look, for the review page to
    stack over the image."""
    with context.sessions()() as session:
        image = image_or_404(session, scope(), image_id)
        if image.purged_at is not None:
            raise Gone(f"image purged: image {image_id}'s pixels were removed by retention")
        # A duplicate is scored (and explained) as its twin.
        key = session.scalar(
            select(Result.heatmap_key).where(
                Result.image_id == (image.duplicate_of_id or image.id),
                latest_result_condition(),
            )
        )
    if key is None:
        raise NotFound(
            f"no heatmap for image {image_id} yet: one is made after scoring, for images that "
            "go to a person (flagged or manual review)"
        )
    response = Response(context.store().read(key), mimetype="image/png")
    # Its address changes with its content (``db.reviews.heatmap_url``): kept long.
    response.cache_control.max_age = 86400
    response.set_etag(key)
    return _private(response)


# However often a reviewer presses H on an image without a heatmap, one task per minute.
HEATMAP_ASK_AGAIN_AFTER = timedelta(seconds=60)


@bp.post("/images/<int:image_id>/heatmap")
@require_role(Role.REVIEWER.value)
def ask_for_heatmap(image_id: int):
    """Ask a worker for the heatmap of an image that goes to a person and has none: scored
    before heatmaps existed, or longer ago than the reconciler looks back, or its task was
    lost. 200 with its address when it has one; 202 when asked for (``workers_ready``
    false: no live worker runs the model that scored it, so none can make it yet); 409 for
    an image the model cleared."""
    now = datetime.now(UTC)
    with context.sessions().begin() as session:
        image = image_or_404(session, scope(), image_id)
        if image.purged_at is not None:
            raise Gone(f"image purged: image {image_id}'s pixels were removed by retention")
        scored = image.duplicate_of_id or image.id  # a duplicate is explained as its twin
        result = session.scalar(
            select(Result).where(Result.image_id == scored, latest_result_condition())
        )
        if result is None:
            raise NotFound(f"image {image_id} has no result yet: it is explained once scored")
        if result.heatmap_key is not None:
            return jsonify(state="ready", heatmap_url=heatmap_url(image_id, result.heatmap_key))
        if not result.flagged:
            raise ApiError(
                409, "only images that go to a person get a heatmap: the model cleared this one"
            )
        version = session.get(ModelVersion, result.model_version_id)
        assert version is not None  # a foreign key
        send = lifecycle.ask_for_heatmap(session, result.id, now, HEATMAP_ASK_AGAIN_AFTER)
        ready = may_explain(session, now, version.sha256)
    if send:
        enqueue_heatmaps(context.celery(), [scored], 1)
    body: dict[str, Any] = {"state": "requested", "workers_ready": ready}
    if not ready:
        body["message"] = (
            f"no running worker has the model that scored this image ({version.name}, "
            f"{version.sha256[:12]}): its heatmap is made once one does"
        )
    return jsonify(body), 202


@bp.get("/images/<int:image_id>")
def get_image(image_id: int):
    image, key = _stored(image_id)
    # Served with the type Pillow detected, never guessed from the uploaded name.
    mimetype = MIME_TYPES.get(image.format or "", "application/octet-stream")
    ext = mimetypes.guess_extension(mimetype) or ""
    store = context.store()
    served: dict[str, Any] = {
        "mimetype": mimetype,
        "download_name": f"image-{image_id}{ext}",
        "max_age": 3600,
    }
    if isinstance(store, ContentStore):
        # A local file: send_file adds its length, date and range support.
        return _private(send_file(store.path_for(key), **served))
    # An object store's download is a stream; its content address is an exact ETag.
    return _private(send_file(store.open(key), etag=key, **served))
