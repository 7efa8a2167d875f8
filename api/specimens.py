"""Specimens: the JSON API under /api/v1/specimens and the specimen list and page.

Rules (status, who may sign, amendments) live in ``db.specimens``; here they are only shown.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy.orm import Session

from api import context
from api.auth import actor, require_role, scope, specimen_scope
from api.errors import ApiError
from api.fhir import emit_specimen_signed
from api.params import int_arg, json_object
from db.models import Interpretation, Role
from db.specimens import INTERPRETATION_TEXT, list_specimens, load_specimen, sign
from db.subtypes import HEADLINE as SUBTYPE_HEADLINE
from db.subtypes import caveat as subtype_caveat
from model.gate import REASON_TEXT

bp = Blueprint("specimens", __name__, url_prefix="/api/v1")
pages = Blueprint("specimen_pages", __name__)

REVIEWER = Role.REVIEWER.value
MAX_ID_CHARS = 64


def _specimen_arg(specimen_id: str) -> str:
    # Ids are checked at intake; anything longer cannot exist, so no query is spent on it.
    if len(specimen_id) > MAX_ID_CHARS:
        raise ApiError(404, f"no specimen {specimen_id[:MAX_ID_CHARS]}…")
    return specimen_id


@bp.get("/specimens")
def list_json():
    limit = int_arg("limit", 50, minimum=1, maximum=500)
    before = int_arg("before", 0) or None
    with context.sessions()() as session:
        rows = list_specimens(session, scope(), before_image_id=before, limit=limit)
    body: dict[str, Any] = {"specimens": [r.as_dict() for r in rows]}
    if len(rows) == limit:
        body["next_before"] = rows[-1].last_image_id
    return jsonify(body)


@bp.get("/specimens/<specimen_id>")
def get_json(specimen_id: str):
    with context.sessions()() as session:
        specimen = load_specimen(session, _specimen_arg(specimen_id), specimen_scope(specimen_id))
    return jsonify(specimen.as_dict())


def _sign_and_notify(
    session: Session, specimen_id: str, interpretation: str, comment: str, amends: int | None
) -> int:
    """Record the signed-in reviewer's sign-off and, in the same transaction, its
    ``specimen.signed`` webhook deliveries: no report is signed without them. Returns the
    sign-off's id."""
    within = specimen_scope(specimen_id)
    row = sign(
        session, _specimen_arg(specimen_id), interpretation, actor(), comment, amends, within
    )
    emit_specimen_signed(session, specimen_id, within)
    return row.id


@bp.post("/specimens/<specimen_id>/signoffs")
@require_role(REVIEWER)
def sign_json(specimen_id: str):
    body = json_object("{interpretation, comment, amends_id}")
    interpretation, comment, amends = (
        body.get("interpretation"),
        body.get("comment", ""),
        body.get("amends_id"),
    )
    if not isinstance(interpretation, str) or not isinstance(comment, str):
        raise ApiError(400, "interpretation and comment must be strings")
    if amends is not None and (not isinstance(amends, int) or isinstance(amends, bool)):
        raise ApiError(400, "amends_id must be the id of the sign-off being amended")
    with context.sessions().begin() as session:
        signoff_id = _sign_and_notify(session, specimen_id, interpretation, comment, amends)
    with context.sessions()() as session:
        specimen = load_specimen(session, specimen_id, specimen_scope(specimen_id))
    return jsonify(signoff_id=signoff_id, specimen=specimen.as_dict()), 201


@pages.get("/specimens")
def specimen_list():
    before = int_arg("before", 0) or None
    with context.sessions()() as session:
        rows = list_specimens(session, scope(), before_image_id=before, limit=50)
    return render_template(
        "specimens.html",
        specimens=[r.as_dict() for r in rows],
        next_before=rows[-1].last_image_id if len(rows) == 50 else None,
    )


@pages.get("/specimens/<specimen_id>")
def specimen_page(specimen_id: str):
    with context.sessions()() as session:
        specimen = load_specimen(session, _specimen_arg(specimen_id), specimen_scope(specimen_id))
    return render_template(
        "specimen.html",
        specimen=specimen.as_dict(),
        # Still waiting, but the unreviewed queue no longer lists them: a link of their own.
        second_opinions=sum(1 for i in specimen.images if i.awaits_second_opinion),
        interpretations=INTERPRETATION_TEXT,
        reasons=REASON_TEXT,
        # Only for images that go to a person (db.subtypes): cleared ones show none.
        subtypes={i.image_id: i.subtype_shown for i in specimen.images if i.subtype_shown},
        subtype_caveat=subtype_caveat,
        subtype_headline=SUBTYPE_HEADLINE,
    )


@pages.post("/specimens/<specimen_id>/sign")
@require_role(REVIEWER)
def specimen_sign(specimen_id: str):
    amends = request.form.get("amends_id", type=int) or None
    interpretation = request.form.get("interpretation", "")
    with context.sessions().begin() as session:
        _sign_and_notify(
            session, specimen_id, interpretation, request.form.get("comment", ""), amends
        )
    flash(f"Specimen {specimen_id} signed: {INTERPRETATION_TEXT[Interpretation(interpretation)]}.")
    return redirect(
        url_for(
            "specimen_pages.specimen_page",
            specimen_id=specimen_id,
            laboratory=request.args.get("laboratory") or None,
        )
    )
