"""Specimens: the images of one accession number rolled up, and their append-only sign-offs.

A specimen exists as soon as one image names it. Its status follows from its images, its
reviews and its sign-offs, by these rules, first match wins:

``scoring``
    some image is still queued or being scored;
``needs_review``
    some image the model routed to a person (flagged or manual review) has no decision yet
    (a request for a second opinion is none; a duplicate is routed as the twin it repeats);
``ready_to_sign``
    nothing above, and not signed (a specimen whose images were all cleared is ready too: a
    pathologist still signs "no leukemia detected");
``changed_since_signing``
    signed, but images were added or decided differently after the signature: an amendment is
    due;
``signed``
    the latest sign-off covers exactly the specimen's current images and decisions.

"No leukemia detected" is refused while a field is decided leukemia, or failed scoring or was
rejected and was not sent again and scored: a specimen is positive if any field is.

A sign-off row is never updated or deleted (``db.audit`` and database triggers refuse it); an
amendment is a new row naming the one it replaces, accepted only if that one is still the latest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db import tenancy
from db.audit import Actor, record_event
from db.errors import Conflict, Invalid, NotFound
from db.models import (
    Batch,
    Decision,
    Image,
    ImageState,
    Interpretation,
    ModelVersion,
    Result,
    Review,
    SpecimenSignoff,
    User,
)
from db.reviews import (
    LEUKEMIA,
    current_review_condition,
    latest_result_condition,
    newest_review,
)
from db.subtypes import SubtypeEstimate, estimate, subtype_json
from model.gate import Route


class SpecimenStatus(enum.StrEnum):
    SCORING = "scoring"
    NEEDS_REVIEW = "needs_review"
    READY_TO_SIGN = "ready_to_sign"
    CHANGED_SINCE_SIGNING = "changed_since_signing"
    SIGNED = "signed"


STATUS_TEXT = {
    SpecimenStatus.SCORING: "images still being scored",
    SpecimenStatus.NEEDS_REVIEW: "images wait for a pathologist's decision",
    SpecimenStatus.READY_TO_SIGN: "every image decided: ready to sign",
    SpecimenStatus.CHANGED_SINCE_SIGNING: "changed after it was signed: amend the sign-off",
    SpecimenStatus.SIGNED: "signed",
}
INTERPRETATION_TEXT = {
    Interpretation.LEUKEMIA_SUSPECTED: "leukemia suspected",
    Interpretation.NO_LEUKEMIA_DETECTED: "no leukemia detected",
    Interpretation.INADEQUATE_SAMPLE: "inadequate sample",
}
TO_PERSON = (Route.FLAGGED.value, Route.MANUAL_REVIEW.value)
PENDING = (ImageState.QUEUED.value, ImageState.SCORING.value)
# A request for a second opinion says nothing about leukemia: the image still waits for a
# person to decide it, and the specimen for that decision before anyone signs it.
NOT_A_DECISION = Decision.SECOND_OPINION.value
MAX_COMMENT = 4000


@dataclass
class SpecimenImage:
    image_id: int
    file_name: str
    batch_id: str
    state: str
    p_leukemia: float | None
    route: str | None
    route_reason: str | None
    threshold: float | None
    model_version: str | None
    decision: str | None
    decided_by: str | None
    review_seq: int
    purged: bool
    subtype: str | None = None
    subtype_probs: dict[str, Any] | None = None
    label: str | None = None  # the current decision's: leukemia, no_leukemia or none
    twin_state: str | None = None  # a duplicate's twin's state: it is scored as its twin
    sha256: str = ""

    @property
    def pending(self) -> bool:
        return self.state in PENDING or self.twin_state in PENDING

    @property
    def to_person(self) -> bool:
        return self.route in TO_PERSON

    @property
    def awaits_decision(self) -> bool:
        return self.to_person and self.decision in (None, NOT_A_DECISION)

    @property
    def awaits_second_opinion(self) -> bool:
        return self.to_person and self.decision == NOT_A_DECISION

    @property
    def subtype_shown(self) -> SubtypeEstimate | None:
        """The subtype estimate the pages show: only for an image that goes to a person."""
        return estimate(self.subtype, self.subtype_probs) if self.to_person else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "batch_id": self.batch_id,
            "state": self.state,
            "p_leukemia": self.p_leukemia,
            "route": self.route,
            "route_reason": self.route_reason,
            **subtype_json(self),
            "threshold": self.threshold,
            "model_version": self.model_version,
            "review_decision": self.decision,
            "reviewed_by": self.decided_by,
            "image_purged": self.purged,
        }


@dataclass
class Signoff:
    id: int
    seq: int
    interpretation: str
    comment: str
    signed_by: str
    signed_at: datetime
    amends_id: int | None
    signed_content: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "interpretation": self.interpretation,
            "interpretation_text": INTERPRETATION_TEXT[Interpretation(self.interpretation)],
            "comment": self.comment,
            "signed_by": self.signed_by,
            "signed_at": self.signed_at.isoformat(),
            "amends_id": self.amends_id,
        }


@dataclass
class Specimen:
    specimen_id: str
    images: list[SpecimenImage]
    signoffs: list[Signoff] = field(default_factory=list)  # oldest first
    source: str = ""
    laboratory_id: int | None = None  # a specimen id names a specimen within one laboratory

    @property
    def latest_signoff(self) -> Signoff | None:
        return self.signoffs[-1] if self.signoffs else None

    def content(self) -> dict[str, Any]:
        """What a signature covers: each image's state, score and current decision."""
        return {
            "images": {
                str(i.image_id): [i.state, i.route, i.decision, i.review_seq] for i in self.images
            }
        }

    @property
    def status(self) -> SpecimenStatus:
        if any(i.pending for i in self.images):
            return SpecimenStatus.SCORING
        if any(i.awaits_decision for i in self.images):
            return SpecimenStatus.NEEDS_REVIEW
        latest = self.latest_signoff
        if latest is None:
            return SpecimenStatus.READY_TO_SIGN
        if latest.signed_content != self.content():
            return SpecimenStatus.CHANGED_SINCE_SIGNING
        return SpecimenStatus.SIGNED

    def counts(self) -> dict[str, int]:
        routes = {r.value: 0 for r in Route}
        for i in self.images:
            if i.route is not None:
                routes[i.route] += 1
        return {
            "images": len(self.images),
            **routes,
            "not_scored": sum(1 for i in self.images if i.state != ImageState.SCORED.value),
            "awaiting_decision": sum(1 for i in self.images if i.awaits_decision),
        }

    def as_dict(self) -> dict[str, Any]:
        scores = [i.p_leukemia for i in self.images if i.p_leukemia is not None]
        latest = self.latest_signoff
        return {
            "specimen_id": self.specimen_id,
            "laboratory_id": self.laboratory_id,
            "source": self.source,
            "status": self.status.value,
            "status_text": STATUS_TEXT[self.status],
            "counts": self.counts(),
            "max_p_leukemia": max(scores) if scores else None,
            "batches": sorted({i.batch_id for i in self.images}),
            "signoff": latest.as_dict() if latest else None,
            "signoffs": [s.as_dict() for s in self.signoffs],
            # Most suspicious first: what a pathologist looks at before the rest.
            "images": [
                i.as_dict() for i in sorted(self.images, key=lambda i: -(i.p_leukemia or -1.0))
            ],
        }


# A duplicate (the same bytes earlier in its batch) is scored as its twin, which may be a field
# of another specimen: its specimen takes the twin's result and waits while the twin scores,
# as the exports do (``db.progress``), else it would look cleared and be signed unexamined.
_TWIN = aliased(Image)


def _scored_as() -> ColumnElement[bool]:
    """Join condition: the newest result of the image, or of its twin for a duplicate."""
    return (Result.image_id == func.coalesce(Image.duplicate_of_id, Image.id)) & (
        latest_result_condition()
    )


def _pending() -> ColumnElement[bool]:
    """True for an image still being scored, or a duplicate whose twin is."""
    return Image.state.in_(PENDING) | _TWIN.state.in_(PENDING)


def _images_select() -> Select:
    return (
        select(
            Image.id,
            Image.original_name,
            Image.batch_id,
            Image.state,
            Image.purged_at,
            Image.specimen_source,
            Image.sha256,
            _TWIN.state.label("twin_state"),
            Result.p_leukemia,
            Result.route,
            Result.route_reason,
            Result.subtype,
            Result.subtype_probs,
            Result.threshold,
            ModelVersion.name.label("model_version"),
            Review.decision,
            Review.label,
            # The newest row's seq even when it withdrew a decision: a signature covers it.
            newest_review(Review.seq).label("seq"),
            User.name,
        )
        .select_from(Image)
        .outerjoin(_TWIN, _TWIN.id == Image.duplicate_of_id)
        .outerjoin(Result, _scored_as())
        .outerjoin(ModelVersion, ModelVersion.id == Result.model_version_id)
        # An undone decision (withdrawn) is no decision: the image waits for one again.
        .outerjoin(Review, current_review_condition())
        .outerjoin(User, User.id == Review.reviewer_id)
    )


def _specimen_laboratory(session: Session, specimen_id: str, scope: tenancy.Scope | None) -> int:
    """The laboratory whose specimen ``specimen_id`` is, among those ``scope`` sees (None:
    every laboratory, for the system); NotFound in none, Conflict when several use the id."""
    stmt = (
        select(Batch.laboratory_id)
        .join(Image, Image.batch_id == Batch.id)
        .where(Image.specimen_id == specimen_id)
        .distinct()
    )
    if scope is not None:
        stmt = tenancy.scoped(stmt, scope)
    labs = list(session.scalars(stmt.limit(2)))
    if not labs:
        raise NotFound(f"no specimen {specimen_id}")
    if len(labs) > 1:
        raise Conflict(
            f"specimen id {specimen_id} is used by more than one of your laboratories: "
            "say whose with ?laboratory=<laboratory id>"
        )
    return labs[0]


def load_specimen(
    session: Session, specimen_id: str, scope: tenancy.Scope | None = None
) -> Specimen:
    """A specimen of the scope's laboratories (None: of any laboratory, for the system)."""
    lab = _specimen_laboratory(session, specimen_id, scope)
    of_specimen = (
        Image.specimen_id == specimen_id,
        Image.batch_id.in_(select(Batch.id).where(Batch.laboratory_id == lab)),
    )
    rows = session.execute(_images_select().where(*of_specimen).order_by(Image.id)).all()
    images = [
        SpecimenImage(
            image_id=r.id,
            file_name=r.original_name,
            batch_id=r.batch_id,
            state=r.state,
            p_leukemia=r.p_leukemia,
            route=r.route,
            route_reason=r.route_reason,
            threshold=r.threshold,
            model_version=r.model_version,
            decision=r.decision,
            decided_by=r.name,
            review_seq=r.seq or 0,
            purged=r.purged_at is not None,
            subtype=r.subtype,
            subtype_probs=r.subtype_probs,
            label=r.label,
            twin_state=r.twin_state,
            sha256=r.sha256,
        )
        for r in rows
    ]
    signoffs = [
        Signoff(
            id=s.id,
            seq=s.seq,
            interpretation=s.interpretation,
            comment=s.comment,
            signed_by=name,
            signed_at=s.created_at,
            amends_id=s.amends_id,
            signed_content=s.signed_content,
        )
        for s, name in session.execute(
            select(SpecimenSignoff, User.name)
            .join(User, User.id == SpecimenSignoff.signed_by_id)
            .where(SpecimenSignoff.laboratory_id == lab, SpecimenSignoff.specimen_id == specimen_id)
            .order_by(SpecimenSignoff.seq)
        )
    ]
    source = next((r.specimen_source for r in rows if r.specimen_source), "")
    return Specimen(specimen_id, images, signoffs, source, lab)


@dataclass(frozen=True)
class SpecimenSummary:
    specimen_id: str
    images: int
    pending: int
    flagged: int
    manual_review: int
    awaiting_decision: int
    max_p_leukemia: float | None
    last_image_id: int
    last_upload: datetime
    signed: bool
    laboratory_id: int  # the id names a specimen within this laboratory

    @property
    def status(self) -> SpecimenStatus:
        """The list's status: the rules above without the signed-content comparison."""
        if self.pending:
            return SpecimenStatus.SCORING
        if self.awaiting_decision:
            return SpecimenStatus.NEEDS_REVIEW
        return SpecimenStatus.SIGNED if self.signed else SpecimenStatus.READY_TO_SIGN

    def as_dict(self) -> dict[str, Any]:
        return {
            "specimen_id": self.specimen_id,
            "laboratory_id": self.laboratory_id,
            "status": self.status.value,
            "status_text": STATUS_TEXT[self.status],
            "images": self.images,
            "flagged": self.flagged,
            "manual_review": self.manual_review,
            "awaiting_decision": self.awaiting_decision,
            "max_p_leukemia": self.max_p_leukemia,
            "last_upload": self.last_upload.isoformat(),
        }


def list_specimens(
    session: Session, scope: tenancy.Scope, before_image_id: int | None = None, limit: int = 50
) -> list[SpecimenSummary]:
    """Specimens of the scope's laboratories, the most recently extended first, keyset-paged
    on their newest image id."""
    to_person = Result.route.in_(TO_PERSON)
    undecided = Review.id.is_(None) | (Review.decision == NOT_A_DECISION)
    last_id = func.max(Image.id)
    stmt = (
        select(
            Image.specimen_id,
            func.count(Image.id),
            func.sum(case((_pending(), 1), else_=0)),
            func.sum(case((Result.route == Route.FLAGGED.value, 1), else_=0)),
            func.sum(case((Result.route == Route.MANUAL_REVIEW.value, 1), else_=0)),
            func.sum(case((to_person & undecided, 1), else_=0)),
            func.max(Result.p_leukemia),
            last_id,
            func.max(Batch.created_at),
            Batch.laboratory_id,
        )
        .select_from(Image)
        .join(Batch, Batch.id == Image.batch_id)
        .outerjoin(_TWIN, _TWIN.id == Image.duplicate_of_id)
        .outerjoin(Result, _scored_as())
        .outerjoin(Review, current_review_condition())
        .where(Image.specimen_id.is_not(None), tenancy.visible(scope, Batch.laboratory_id))
        .group_by(Batch.laboratory_id, Image.specimen_id)
        .order_by(last_id.desc())
        .limit(limit)
    )
    if before_image_id is not None:
        stmt = stmt.having(last_id < before_image_id)
    rows = session.execute(stmt).all()
    signed = {
        (lab, specimen)
        for lab, specimen in session.execute(
            select(SpecimenSignoff.laboratory_id, SpecimenSignoff.specimen_id).where(
                SpecimenSignoff.specimen_id.in_([r[0] for r in rows])
            )
        )
    }
    return [
        SpecimenSummary(
            specimen_id=r[0],
            images=r[1],
            pending=int(r[2] or 0),
            flagged=int(r[3] or 0),
            manual_review=int(r[4] or 0),
            awaiting_decision=int(r[5] or 0),
            max_p_leukemia=r[6],
            last_image_id=r[7],
            last_upload=r[8],
            signed=(r[9], r[0]) in signed,
            laboratory_id=r[9],
        )
        for r in rows
    ]


def _refuse_negative(specimen: Specimen) -> None:
    """A specimen is positive if any of its fields is, and one with a field nobody could
    examine (scoring failed, or the file was rejected) is not known to be negative: "no
    leukemia detected" would put a negative report in the LIS that its own fields contradict."""
    positive = [i for i in specimen.images if i.label == LEUKEMIA]
    if positive:
        names = ", ".join(f"{i.file_name} (image {i.image_id})" for i in positive)
        raise Conflict(
            f"specimen {specimen.specimen_id} cannot be signed no leukemia detected: "
            f"a pathologist decided leukemia on {names}"
        )
    # A field sent again and scored this time was examined after all.
    examined = {i.sha256 for i in specimen.images if i.p_leukemia is not None}
    # A rejected file (unreadable, too large, not an image) was never examined either: a
    # specimen whose every file was rejected must not read "no leukemia detected".
    unexamined = (ImageState.FAILED.value, ImageState.REJECTED.value)
    failed = [i for i in specimen.images if i.state in unexamined and i.sha256 not in examined]
    if failed:
        names = ", ".join(f"{i.file_name} (image {i.image_id})" for i in failed)
        raise Conflict(
            f"specimen {specimen.specimen_id} cannot be signed no leukemia detected: "
            f"{names} could not be scored; sign it inadequate sample or send the field again"
        )


def sign(
    session: Session,
    specimen_id: str,
    interpretation: str,
    signer: Actor,
    comment: str = "",
    amends_id: int | None = None,
    scope: tenancy.Scope | None = None,
) -> SpecimenSignoff:
    """Append a sign-off to a specimen of the scope's laboratories; an amendment must name
    the latest one (Conflict otherwise)."""
    if interpretation not in {i.value for i in Interpretation}:
        raise Invalid(f"interpretation must be one of {', '.join(i.value for i in Interpretation)}")
    specimen = load_specimen(session, specimen_id, scope)
    status = specimen.status
    if status is SpecimenStatus.SCORING:
        raise Conflict(f"specimen {specimen_id} cannot be signed: images are still being scored")
    if status is SpecimenStatus.NEEDS_REVIEW:
        waiting = specimen.counts()["awaiting_decision"]
        raise Conflict(
            f"specimen {specimen_id} cannot be signed: {waiting} image(s) still wait for a decision"
        )
    if interpretation == Interpretation.NO_LEUKEMIA_DETECTED.value:
        _refuse_negative(specimen)
    latest = specimen.latest_signoff
    if latest is not None and amends_id != latest.id:
        raise Conflict(
            f"specimen {specimen_id} is already signed (sign-off {latest.id}, by "
            f"{latest.signed_by}): reload it and amend that sign-off"
        )
    if latest is None and amends_id is not None:
        raise Conflict(f"specimen {specimen_id} has no sign-off to amend")
    if latest is not None and not comment.strip():
        raise Invalid("an amendment needs a comment saying what changed and why")
    row = SpecimenSignoff(
        laboratory_id=specimen.laboratory_id,
        specimen_id=specimen_id,
        seq=(latest.seq if latest else 0) + 1,
        interpretation=interpretation,
        comment=comment[:MAX_COMMENT],
        amends_id=amends_id,
        signed_content=specimen.content(),
        signed_by_id=signer.id,
    )
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"specimen {specimen_id} was signed by someone else at the same moment; reload it"
        ) from None
    record_event(
        session,
        signer,
        "specimen.amend" if amends_id else "specimen.sign",
        f"specimen:{specimen_id}",
        laboratory_id=specimen.laboratory_id,
        interpretation=interpretation,
        signoff_id=row.id,
        amends_id=amends_id,
        images=len(specimen.images),
    )
    return row
