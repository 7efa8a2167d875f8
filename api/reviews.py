"""The review workflow as JSON: the queue, decisions with their history, threshold, QC sample."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Blueprint, jsonify, request

from api import context
from api.auth import actor, laboratory_scope, require_role, scope
from api.errors import ApiError
from api.params import int_arg, json_object, text_field
from db.errors import NotFound
from db.models import Role
from db.reviews import (
    ALL_ROUTES,
    QueueFilter,
    decision_json,
    history,
    parse_cursor,
    queue_item,
    record_decision,
    review_json,
    review_queue,
    sample_unflagged,
    threshold_counts,
    undo_decision,
)
from db.tenancy import batch_or_404, image_or_404

bp = Blueprint("reviews", __name__, url_prefix="/api/v1")

REVIEWERS = (Role.REVIEWER.value,)


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, not {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, f"{name} must be between 0 and 1")
    return value


def _date_arg(name: str, end_of_day: bool = False) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
        # "until 25 November" from a date picker means up to the end of that day.
        return value + timedelta(days=1) if end_of_day and len(raw) == 10 else value
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO date (YYYY-MM-DD), not {raw!r}") from None
    except OverflowError:  # until=9999-12-31: the day after is past datetime's range
        raise ApiError(400, f"{name} is out of range: {raw!r}") from None


def _order_arg() -> str:
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be asc or desc")
    return order


def _known_batch(batch_id: str) -> None:
    with context.sessions()() as session:
        batch_or_404(session, scope(), batch_id)


@bp.get("/review/queue")
@require_role(*REVIEWERS)
def queue():
    state = request.args.get("state", "unreviewed")
    threshold = _float_arg("threshold")
    batch_id = request.args.get("batch") or None
    if threshold is not None and batch_id is None:
        raise ApiError(400, "a threshold is explored for one batch: give ?batch=")
    f = QueueFilter(
        batch_id=batch_id,
        state=None if state in ("", "all") else state,
        since=_date_arg("since"),
        until=_date_arg("until", end_of_day=True),
        min_p=_float_arg("min_p"),
        max_p=_float_arg("max_p"),
        threshold=threshold,
        ascending=_order_arg() == "asc",
        route=request.args.get("route") or ALL_ROUTES,  # db.reviews checks it
        specimen_id=request.args.get("specimen") or None,
    )
    limit = int_arg("limit", 50, minimum=1, maximum=500)
    with context.sessions()() as session:
        # ``laboratory``: one laboratory's images, for whoever sees several (a specimen id
        # names a specimen within its laboratory).
        within = laboratory_scope("laboratory", request.args.get("laboratory"))
        items, cursor = review_queue(
            session, f, parse_cursor(request.args.get("after")), limit, within
        )
    return jsonify(items=items, next=cursor)


@bp.get("/review/items/<int:image_id>")
@require_role(*REVIEWERS)
def item(image_id: int):
    with context.sessions()() as session:
        found = queue_item(session, image_id, scope())
        if found is None:
            raise NotFound(f"no scored image {image_id}")
        found["history"] = history(session, image_id)
    return jsonify(found)


@bp.get("/images/<int:image_id>/reviews")
@require_role(*REVIEWERS)
def image_history(image_id: int):
    with context.sessions()() as session:
        image_or_404(session, scope(), image_id)
        return jsonify(image_id=image_id, reviews=history(session, image_id))


@bp.post("/images/<int:image_id>/reviews")
@require_role(*REVIEWERS)
def decide(image_id: int):
    body = json_object("send a JSON object: {decision, comment, expected_seq}")
    expected = body.get("expected_seq")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise ApiError(400, "expected_seq must be an integer")
    comment = body.get("comment") or ""
    if not isinstance(comment, str):
        raise ApiError(400, "comment must be text")
    reviewer = actor()
    with context.sessions().begin() as session:
        review = record_decision(
            session,
            image_id,
            text_field(body, "decision", "") or "",
            reviewer,
            scope(),
            comment=comment,
            expected_seq=expected,
        )
        row = decision_json(review, reviewer.name)
    return jsonify(row), 201


@bp.post("/images/<int:image_id>/reviews/<int:seq>/undo")
@require_role(*REVIEWERS)
def undo(image_id: int, seq: int):
    reviewer = actor()
    with context.sessions().begin() as session:
        review = undo_decision(session, image_id, seq, reviewer, scope())
        row = review_json(review, reviewer.name)
    return jsonify(row), 201


@bp.get("/batches/<batch_id>/threshold")
@require_role(*REVIEWERS)
def explore_threshold(batch_id: str):
    _known_batch(batch_id)
    threshold = _float_arg("t")
    if threshold is None:
        raise ApiError(400, "give ?t= between 0 and 1")
    with context.sessions()() as session:
        return jsonify(threshold_counts(session, batch_id, threshold))


@bp.get("/batches/<batch_id>/sample")
@require_role(*REVIEWERS)
def qc_sample(batch_id: str):
    _known_batch(batch_id)
    n = int_arg("n", 20, minimum=1, maximum=200)
    with context.sessions()() as session:
        return jsonify(batch_id=batch_id, items=sample_unflagged(session, batch_id, n))
