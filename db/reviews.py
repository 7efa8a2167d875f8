"""Pathologist decisions: an append-only history per image content, the review queue and QC
samples.

A decision is about what the laboratory sent, the image's bytes (``image.sha256``): the same
file in two batches is one history, decided once, and every copy, its page and its batch's
export show that decision (issue 11), within one laboratory: another laboratory that sent the
same bytes has its own history, and neither sees the other's. The current decision is the
content's review row with the highest ``seq``; nothing is ever updated. The queue is
keyset-paginated on (p_leukemia, result id) so that page 1000 costs what page 1 costs,
whatever the number of results, and shows each content once across its laboratory's batches,
naming every batch that holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased
from sqlalchemy.sql.selectable import ScalarSelect

from db import tenancy
from db.audit import Actor, record_event
from db.errors import Conflict, Invalid
from db.models import (
    Batch,
    Decision,
    Image,
    ImageState,
    ModelVersion,
    Result,
    Review,
    User,
    utcnow,
)
from db.subtypes import subtype_json
from model.gate import REASON_TEXT, Route

LEUKEMIA, NO_LEUKEMIA = "leukemia", "no_leukemia"
# An undo is a row of its own: ``withdrawn`` takes back the decision just before it (whose
# value it keeps in ``previous_decision``) and leaves the image undecided, back in the
# unreviewed queue. It never guesses which earlier decision should stand again: a person decides.
WITHDRAWN = "withdrawn"
# How long a reviewer may take back their own latest decision (the page offers it as long).
UNDO_WINDOW_S = 60
# A cleared image that a reviewer overturned to leukemia (in QC): the model missed it.
FALSE_NEGATIVE = "false_negative"
# Queue states: the current decision, none (``unreviewed``, withdrawn included), or the
# false negatives found in QC (cleared images only; every other state is about flagged ones).
STATES = ("unreviewed", *(d.value for d in Decision), FALSE_NEGATIVE)
# Which images the queue shows: every image that goes to a person (``all``: flagged and
# manual review), or one of those routes alone. Cleared images go to the QC sample instead.
ALL_ROUTES = "all"
QUEUE_ROUTES = (ALL_ROUTES, Route.FLAGGED.value, Route.MANUAL_REVIEW.value)


def image_laboratory() -> ScalarSelect[int]:
    """The laboratory of the image in the enclosing query (correlated on ``image``)."""
    own = aliased(Batch)
    return (
        select(own.laboratory_id).where(own.id == Image.batch_id).correlate(Image).scalar_subquery()
    )


def newest_review(column: InstrumentedAttribute[Any]) -> ScalarSelect[Any]:
    """``column`` of the newest review row of each image's content in the image's
    laboratory, whichever copy it was recorded on, as a correlated scalar subquery.

    A LIMIT 1 on (laboratory, sha256, seq): one index probe per image actually read, so a
    page of the queue never touches the whole review table.
    """
    return (
        select(column)
        .where(Review.laboratory_id == image_laboratory(), Review.sha256 == Image.sha256)
        .order_by(Review.seq.desc())
        .limit(1)
        .correlate(Image)
        .scalar_subquery()
    )


def latest_review_condition() -> ColumnElement[bool]:
    """Join condition picking each image's newest review row (there may be none)."""
    return Review.id == newest_review(Review.id)


def current_review_condition() -> ColumnElement[bool]:
    """Join condition picking each image's current decision: its newest review row, unless
    that row withdrew a decision (an undo leaves the image undecided). An outer join on it
    keeps "unreviewed" a plain IS NULL, which the queue's index walk is planned for."""
    return and_(latest_review_condition(), Review.decision != WITHDRAWN)


def first_copy_condition() -> ColumnElement[bool]:
    """True for the copy of a content that the queue shows: no other copy with the same bytes
    in the same laboratory has an earlier result that currently goes to a person. Copies
    scored by one model share their score, so the content appears once, at its place in the
    queue. (The statement must join ``batch`` for the image.)"""
    other_image, other_batch = aliased(Image), aliased(Batch)
    other, newer = aliased(Result), aliased(Result)
    return ~exists().where(
        other_image.sha256 == Image.sha256,
        other_batch.id == other_image.batch_id,
        other_batch.laboratory_id == Batch.laboratory_id,
        other.image_id == other_image.id,
        other.flagged.is_(True),
        other.id < Result.id,
        ~exists().where(newer.image_id == other.image_id, newer.id > other.id),
    )


def heatmap_url(image_id: int, key: str | None) -> str | None:
    """The path of the image's explanation heatmap (``GET /api/v1/images/<id>/heatmap``), or
    None while it has none. The key's start is in the query: a heatmap made anew (the image
    rescored by another model) has another address, so a browser may keep each one long."""
    return f"/api/v1/images/{image_id}/heatmap?v={key[:16]}" if key else None


def latest_result_condition() -> ColumnElement[bool]:
    """True for the newest result of its image (an image rescored by a new model has several)."""
    newer = aliased(Result)
    return ~exists().where(newer.image_id == Result.image_id, newer.id > Result.id)


@dataclass(frozen=True)
class QueueFilter:
    batch_id: str | None = None
    state: str | None = "unreviewed"  # None: every state
    since: datetime | None = None
    until: datetime | None = None
    min_p: float | None = None
    max_p: float | None = None
    # Explore another operating point: what would be flagged at this threshold instead.
    threshold: float | None = None
    ascending: bool = False
    route: str = ALL_ROUTES  # one of QUEUE_ROUTES
    specimen_id: str | None = None  # one specimen's images (review grouped by specimen)


def _item_select() -> Select:
    return (
        select(
            Image.id.label("image_id"),
            Image.original_name.label("file_name"),
            Image.batch_id,
            Image.specimen_id,
            Batch.name.label("batch_name"),
            Result.id.label("result_id"),
            Result.p_leukemia,
            Result.flagged,
            Result.threshold,
            Result.route,
            Result.route_reason,
            Result.subtype,
            Result.subtype_probs,
            Result.domain_distance,
            Result.scored_at,
            Result.heatmap_key,
            ModelVersion.name.label("model_version"),
            # The newest row's seq, even when that row withdrew a decision: the next decision
            # extends the history from there. Evaluated for the rows returned only.
            newest_review(Review.seq).label("seq"),
            Review.decision,
            Review.label,
            Review.comment,
            Review.created_at.label("reviewed_at"),
            User.name.label("reviewed_by"),
        )
        .select_from(Result)
        .join(Image, Image.id == Result.image_id)
        .join(Batch, Batch.id == Image.batch_id)
        .join(ModelVersion, ModelVersion.id == Result.model_version_id)
        .outerjoin(Review, current_review_condition())
        .outerjoin(User, User.id == Review.reviewer_id)
        .where(latest_result_condition())
    )


def _item_json(row: Any) -> dict[str, Any]:
    decided = row.decision is not None
    return {
        "image_id": row.image_id,
        "file_name": row.file_name,
        "batch_id": row.batch_id,
        "batch_name": row.batch_name,
        "specimen_id": row.specimen_id,
        "result_id": row.result_id,
        "p_leukemia": row.p_leukemia,
        "flagged": row.flagged,
        "threshold": row.threshold,
        "route": row.route,
        "route_reason": row.route_reason,
        # The reason in plain words for the page (model.gate.REASON_TEXT), null without one.
        "route_reason_text": REASON_TEXT.get(row.route_reason) if row.route_reason else None,
        **subtype_json(row),
        "domain_distance": row.domain_distance,
        # Where the network looked (``model.explain``); null until made (after scoring).
        "heatmap_url": heatmap_url(row.image_id, row.heatmap_key),
        "model_version": row.model_version,
        "scored_at": row.scored_at.isoformat(),
        "state": row.decision or "unreviewed",
        "label": row.label,
        # A QC finding: the model cleared the image and a reviewer says leukemia.
        "false_negative": decided and not row.flagged and row.label == LEUKEMIA,
        "seq": row.seq or 0,
        "comment": row.comment,
        "reviewed_by": row.reviewed_by,
        "reviewed_at": row.reviewed_at.isoformat() if decided else None,
    }


def parse_cursor(raw: str | None) -> tuple[float, int] | None:
    if not raw:
        return None
    try:
        p, image_result = raw.split(":", 1)
        score, last_id = float(p), int(image_result)
    except ValueError:
        raise Invalid(f"bad cursor {raw!r}") from None
    # nan compares false with everything and would silently end the walk; ids are 64-bit.
    if not (math.isfinite(score) and 0.0 <= score <= 1.0 and 0 <= last_id < 2**63):
        raise Invalid(f"bad cursor {raw!r}: a score in [0, 1] and an id")
    return score, last_id


def queue_statement(
    f: QueueFilter, after: tuple[float, int] | None, limit: int, scope: tenancy.Scope
) -> Select:
    if f.state is not None and f.state not in STATES:
        raise Invalid(f"state must be one of {', '.join(STATES)}")
    if f.route not in QUEUE_ROUTES:
        raise Invalid(f"route must be one of {', '.join(QUEUE_ROUTES)}")
    stmt = tenancy.scoped(_item_select(), scope)
    manual = Result.route == Route.MANUAL_REVIEW.value
    if f.state == FALSE_NEGATIVE:
        # Cleared images, outside the flagged index: start from the few leukemia labels.
        stmt = stmt.where(
            Result.flagged.is_(False),
            Review.label == LEUKEMIA,
            Image.sha256.in_(
                select(Review.sha256).where(
                    Review.decision == Decision.OVERTURNED.value, Review.label == LEUKEMIA
                )
            ),
        )
        if f.route != ALL_ROUTES:
            stmt = stmt.where(Result.route == f.route)
    elif f.threshold is None:
        # ``flagged`` is true for both routes that go to a person: the queue index's prefix.
        stmt = stmt.where(Result.flagged.is_(True))
        if f.route != ALL_ROUTES:
            stmt = stmt.where(Result.route == f.route)
    else:
        # At another threshold the in-domain images are flagged anew; an image the model
        # cannot judge goes to a person whatever the threshold.
        would_flag = and_(~manual, Result.p_leukemia >= f.threshold)
        stmt = stmt.where(
            {ALL_ROUTES: or_(would_flag, manual), Route.FLAGGED.value: would_flag}.get(
                f.route, manual
            )
        )
    if f.batch_id:
        stmt = stmt.where(Result.batch_id == f.batch_id)
    else:
        stmt = stmt.where(first_copy_condition())
    if f.specimen_id:
        stmt = stmt.where(Image.specimen_id == f.specimen_id)
    if f.since:
        stmt = stmt.where(Result.scored_at >= f.since)
    if f.until:
        stmt = stmt.where(Result.scored_at < f.until)
    if f.min_p is not None:
        stmt = stmt.where(Result.p_leukemia >= f.min_p)
    if f.max_p is not None:
        stmt = stmt.where(Result.p_leukemia <= f.max_p)
    if f.state == "unreviewed":
        stmt = stmt.where(Review.id.is_(None))
    elif f.state is not None and f.state != FALSE_NEGATIVE:
        stmt = stmt.where(Review.decision == f.state)
    key = tuple_(Result.p_leukemia, Result.id)
    if after is not None:
        stmt = stmt.where(key > tuple_(*after) if f.ascending else key < tuple_(*after))
    if f.ascending:
        stmt = stmt.order_by(Result.p_leukemia.asc(), Result.id.asc())
    else:
        stmt = stmt.order_by(Result.p_leukemia.desc(), Result.id.desc())
    return stmt.limit(limit + 1)


def review_queue(
    session: Session,
    f: QueueFilter,
    after: tuple[float, int] | None,
    limit: int,
    scope: tenancy.Scope,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the queue (of the scope's laboratories) and the next page's cursor (None
    on the last page)."""
    rows = session.execute(queue_statement(f, after, limit, scope)).all()
    items = with_copies(session, [_item_json(r) for r in rows[:limit]])
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = f"{last.p_leukemia!r}:{last.result_id}"
    return items, cursor


def queue_item(session: Session, image_id: int, scope: tenancy.Scope) -> dict[str, Any] | None:
    stmt = tenancy.scoped(_item_select().where(Image.id == image_id), scope)
    row = session.execute(stmt).first()
    return with_copies(session, [_item_json(row)])[0] if row else None


def with_copies(session: Session, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each item ``copies``: every other image with the same bytes in the same
    laboratory (any batch), which shares its decision; empty for most images."""
    if not items:
        return items
    by_image = {item["image_id"]: item for item in items}
    wanted = (
        select(Image.sha256, Batch.laboratory_id)
        .join(Batch, Batch.id == Image.batch_id)
        .where(Image.id.in_(by_image))
    )
    rows = session.execute(
        select(
            Image.id,
            Image.original_name,
            Image.batch_id,
            Batch.name,
            Image.state,
            Image.sha256,
            Batch.laboratory_id,
        )
        .join(Batch, Batch.id == Image.batch_id)
        .where(
            tuple_(Image.sha256, Batch.laboratory_id).in_(wanted),
            Image.state != ImageState.REJECTED.value,
        )
        .order_by(Image.id)
    ).all()
    copies: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for image_id, file_name, batch_id, batch_name, state, sha256, lab in rows:
        copies.setdefault((sha256, lab), []).append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "batch_id": batch_id,
                "batch_name": batch_name,
                "state": state,
            }
        )
    content_of = {r.id: (r.sha256, r.laboratory_id) for r in rows}
    for image_id, item in by_image.items():
        item["copies"] = [
            c
            for c in copies.get(content_of.get(image_id, ("", 0)), [])
            if c["image_id"] != image_id
        ]
    return items


def sample_unflagged(session: Session, batch_id: str, n: int) -> list[dict[str, Any]]:
    """A random sample of the batch's cleared images, for quality control of negatives
    (``batch_id`` from ``tenancy.batch_or_404``)."""
    stmt = (
        _item_select()
        .where(Result.batch_id == batch_id, Result.flagged.is_(False))
        .order_by(func.random())
        .limit(n)
    )
    return [_item_json(r) for r in session.execute(stmt)]


def label_for(decision: str, flagged: bool) -> str | None:
    """The label a decision gives: "confirmed" keeps the model's side, "overturned" flips it.

    A manual-review image is stored with ``flagged`` true (it goes to a person), so confirming
    it says leukemia and overturning it says no leukemia: the page words its buttons so.
    """
    if decision == Decision.SECOND_OPINION.value:
        return None
    positive = flagged if decision == Decision.CONFIRMED.value else not flagged
    return LEUKEMIA if positive else NO_LEUKEMIA


def record_decision(
    session: Session,
    image_id: int,
    decision: str,
    reviewer: Actor,
    scope: tenancy.Scope,
    comment: str = "",
    expected_seq: int | None = None,
) -> Review:
    """Append a decision on an image of the reviewer's laboratories. Raises Conflict when
    someone decided since ``expected_seq``."""
    if decision not in {d.value for d in Decision}:
        raise Invalid(f"decision must be one of {', '.join(d.value for d in Decision)}")
    image, result, previous = _current(session, image_id, scope)
    seq = previous.seq if previous else 0
    if expected_seq is not None and expected_seq != seq:
        raise Conflict(_changed_meanwhile(session, image_id, previous))
    return _append(
        session,
        image,
        result,
        previous,
        reviewer,
        decision=decision,
        label=label_for(decision, result.flagged),
        comment=comment,
        action="review.decide",
    )


def undo_decision(
    session: Session,
    image_id: int,
    seq: int,
    reviewer: Actor,
    scope: tenancy.Scope,
    now: datetime | None = None,
) -> Review:
    """Take back the reviewer's own latest decision ``seq`` within UNDO_WINDOW_S.

    Appends a ``withdrawn`` row (nothing is updated or deleted), which leaves the image
    undecided. Raises Conflict when ``seq`` is no longer the latest decision, is someone
    else's, is already withdrawn or is older than the window.
    """
    image, result, previous = _current(session, image_id, scope)
    if previous is None or previous.seq != seq:
        raise Conflict(_changed_meanwhile(session, image_id, previous))
    if previous.decision == WITHDRAWN:
        raise Conflict(f"decision {seq} of image {image_id} is an undo already")
    if previous.reviewer_id != reviewer.id:
        raise Conflict("only the reviewer who made a decision can undo it; decide again instead")
    if ((now or utcnow()) - previous.created_at).total_seconds() > UNDO_WINDOW_S:
        raise Conflict(
            f"a decision can be undone for {UNDO_WINDOW_S} seconds only; decide again instead"
        )
    return _append(
        session,
        image,
        result,
        previous,
        reviewer,
        decision=WITHDRAWN,
        label=None,
        comment="",
        action="review.undo",
    )


def undo_until(review: Review) -> datetime | None:
    """Until when the reviewer may undo this decision (None for an undo itself)."""
    if review.decision == WITHDRAWN:
        return None
    return review.created_at + timedelta(seconds=UNDO_WINDOW_S)


def _current(
    session: Session, image_id: int, scope: tenancy.Scope
) -> tuple[Image, Result, Review | None]:
    """The image (of the scope's laboratories), its latest result and its content's latest
    review row in its laboratory; refuses an image with no score."""
    image = tenancy.image_or_404(session, scope, image_id)
    result = session.scalar(
        select(Result).where(Result.image_id == image_id).order_by(Result.id.desc()).limit(1)
    )
    if image.state != ImageState.SCORED.value or result is None:
        raise Conflict(f"image {image_id} has no score to review (state {image.state})")
    # The content's history in the image's laboratory, whichever copy each earlier decision
    # was made on.
    previous = session.scalar(
        select(Review)
        .where(Review.laboratory_id == image.batch.laboratory_id, Review.sha256 == image.sha256)
        .order_by(Review.seq.desc())
        .limit(1)
    )
    return image, result, previous


def _changed_meanwhile(session: Session, image_id: int, latest: Review | None) -> str:
    """The 409 message: what the image's history says now, in words a reviewer can act on."""
    if latest is None:
        return f"image {image_id} has no decision now; reload it"
    who = session.scalar(select(User.name).where(User.id == latest.reviewer_id))
    now = (
        "its decision was withdrawn"
        if latest.decision == WITHDRAWN
        else f"it is now {latest.decision.replace('_', ' ')}"
    )
    return (
        f"image {image_id} was reviewed again meanwhile by {who}: {now} "
        f"(decision {latest.seq}); reload it"
    )


def _append(
    session: Session,
    image: Image,
    result: Result,
    previous: Review | None,
    reviewer: Actor,
    *,
    decision: str,
    label: str | None,
    comment: str,
    action: str,
) -> Review:
    image_id = image.id
    lab = image.batch.laboratory_id
    review = Review(
        image_id=image_id,
        laboratory_id=lab,
        sha256=image.sha256,
        result_id=result.id,
        seq=(previous.seq if previous else 0) + 1,
        decision=decision,
        label=label,
        comment=comment[:4000],
        previous_decision=previous.decision if previous else None,
        reviewer_id=reviewer.id,
    )
    session.add(review)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"image {image_id} was reviewed by someone else at the same moment; reload it"
        ) from None
    # Also in the audit trail, so that one list shows every action of every person.
    record_event(
        session,
        reviewer,
        action,
        f"image:{image_id}",
        # The image's laboratory, which a reviewer granted several may not call home.
        laboratory_id=lab,
        decision=decision,
        previous=review.previous_decision,
        seq=review.seq,
        review_id=review.id,
    )
    return review


def history(session: Session, image_id: int) -> list[dict[str, Any]]:
    """Every decision on this image's content in its laboratory, on this copy or another
    (``image_id`` says which copy each was made on; ``image_id`` from
    ``tenancy.image_or_404``)."""
    content = select(Image.sha256).where(Image.id == image_id).scalar_subquery()
    lab = (
        select(Batch.laboratory_id)
        .join(Image, Image.batch_id == Batch.id)
        .where(Image.id == image_id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Review, User.name)
        .join(User, User.id == Review.reviewer_id)
        .where(Review.laboratory_id == lab, Review.sha256 == content)
        .order_by(Review.seq)
    ).all()
    return [review_json(r, name) for r, name in rows]


def review_json(review: Review, reviewer_name: str) -> dict[str, Any]:
    return {
        "id": review.id,
        "image_id": review.image_id,
        "seq": review.seq,
        "decision": review.decision,
        "label": review.label,
        "previous_decision": review.previous_decision,
        "comment": review.comment,
        "reviewer": reviewer_name,
        "created_at": review.created_at.isoformat(),
    }


def decision_json(review: Review, reviewer_name: str) -> dict[str, Any]:
    """A decision just recorded, with until when its reviewer may still undo it."""
    until = undo_until(review)
    return review_json(review, reviewer_name) | {"undo_until": until.isoformat() if until else None}


def threshold_counts(session: Session, batch_id: str, threshold: float) -> dict[str, Any]:
    """How many of the batch's scored images a given threshold would flag; stores nothing.

    Only images the model may judge are flagged or cleared by a threshold; those it cannot
    judge (``manual_review``) go to a person whatever the threshold, and are counted apart.
    """
    manual = Result.route == Route.MANUAL_REVIEW.value
    would, flagged, manual_review, scored, model_threshold = session.execute(
        select(
            func.count().filter(~manual, Result.p_leukemia >= threshold),
            func.count().filter(Result.route == Route.FLAGGED.value),
            func.count().filter(manual),
            func.count(),
            func.max(Result.threshold),
        ).where(Result.batch_id == batch_id, latest_result_condition())
    ).one()
    return {
        "batch_id": batch_id,
        "threshold": threshold,
        "would_flag": int(would or 0),
        "flagged": int(flagged or 0),
        "manual_review": int(manual_review or 0),
        "scored": int(scored or 0),
        "model_threshold": model_threshold,
    }


def decision_counts(session: Session, batch_id: str) -> dict[str, int]:
    """The batch's images per current decision, and the false negatives found among them."""
    rows = session.execute(
        select(
            Review.decision,
            func.count(),
            func.count().filter(Result.flagged.is_(False), Review.label == LEUKEMIA),
        )
        .select_from(Image)
        .join(Review, latest_review_condition())
        .join(Result, Result.id == Review.result_id)
        # A duplicate shows its twin's decision but is not a second image reviewed.
        .where(
            Image.batch_id == batch_id,
            Image.state != ImageState.DUPLICATE.value,
            Review.decision != WITHDRAWN,
        )
        .group_by(Review.decision)
    ).all()
    counts = {d.value: 0 for d in Decision} | {decision: n for decision, n, _ in rows}
    return counts | {FALSE_NEGATIVE: sum(int(fn or 0) for _, _, fn in rows)}
