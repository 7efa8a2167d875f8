"""The web pages: laboratory dashboard, upload, single image, review queue and admin.

Pages are thin: they render a shell with the ids they need in data- attributes, and small
scripts in api/static read the JSON API (same session, CSRF header on POST). Nothing is
rendered from user data except through Jinja's autoescaping or the DOM's textContent.
"""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from api import context
from api.accounts import event_json, laboratory_json, token_json, user_json
from api.auth import actor, require_global_admin, require_role, scope
from api.params import MAX_SMALL_ID
from db import tenancy
from db.accounts import (
    ROLES,
    audit_events,
    create_laboratory,
    create_token,
    create_user,
    list_tokens,
    list_users,
    revoke_token,
    update_user,
)
from db.models import Batch, Role
from db.reviews import ALL_ROUTES, FALSE_NEGATIVE, STATES
from db.subtypes import page_words
from model.gate import REASON_TEXT, Route

bp = Blueprint("pages", __name__)

REVIEWER, ADMIN = Role.REVIEWER.value, Role.ADMIN.value
# The review queue's route filter (db.reviews.QUEUE_ROUTES) as the page words it.
ROUTE_LABELS = {
    ALL_ROUTES: "everything that needs a person",
    Route.FLAGGED.value: "flagged only",
    Route.MANUAL_REVIEW.value: "manual review only (model cannot judge)",
}

# The queue's state filter (db.reviews.STATES) as the page words it.
STATE_LABELS = {s: s.replace("_", " ") for s in STATES} | {
    FALSE_NEGATIVE: "false negatives found in QC (cleared, overturned to leukemia)"
}


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    # No inline script or style anywhere: a name that slipped past escaping could not run.
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    # Browsers must trust the declared type: an upload can never be rendered as HTML.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # No page may be framed (clickjacking a review decision); X-Frame-Options for old browsers.
    response.headers.setdefault("X-Frame-Options", "DENY")
    # Batch ids and review filters in our URLs stay on this site.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@bp.get("/")
def index():
    return redirect(url_for("pages.batches"))


@bp.get("/batches")
def batches():
    return render_template("batches.html")


@bp.get("/batches/<batch_id>")
def batch(batch_id: str):
    with context.sessions()() as session:
        found = tenancy.batch_or_404(session, scope(), batch_id)
    # The subtype's words, for the list's column of images that go to a person.
    return render_template("batch.html", batch=found, subtype_words=page_words())


@bp.get("/upload")
def upload():
    return render_template("upload.html")


@bp.get("/single")
def single():
    # The route reasons in plain words, for the script to show beside a result.
    # With the subtype's words, for the script to show an estimate beside a flagged result.
    return render_template("single.html", reasons=REASON_TEXT, subtype_words=page_words())


@bp.get("/review")
@require_role(REVIEWER)
def review():
    with context.sessions()() as session:
        recent = session.execute(
            tenancy.scoped(select(Batch.id, Batch.name), scope())
            .order_by(Batch.created_at.desc())
            .limit(200)
        ).all()
    return render_template(
        "review.html",
        mode="queue",
        batches=recent,
        states=STATE_LABELS,
        route_labels=ROUTE_LABELS,
        subtype_words=page_words(),
        args=request.args,
    )


@bp.get("/review/sample/<batch_id>")
@require_role(REVIEWER)
def review_sample(batch_id: str):
    with context.sessions()() as session:
        found = tenancy.batch_or_404(session, scope(), batch_id)
    return render_template(
        "review.html",
        mode="sample",
        batch=found,
        batches=[],
        states=STATE_LABELS,
        route_labels=ROUTE_LABELS,
        subtype_words=page_words(),
        args=request.args,
    )


@bp.get("/admin")
@require_role(ADMIN)
def admin():
    here = scope()
    with context.sessions()() as session:
        labs = [laboratory_json(lab) for lab in tenancy.laboratories(session, here)]
        users = [user_json(u, tenancy.granted(session, u.id)) for u in list_users(session, here)]
        tokens = [token_json(t) for t in list_tokens(session, here, limit=200)]
        events = [event_json(e) for e in audit_events(session, here, limit=200)]
    return render_template(
        "admin.html",
        users=users,
        tokens=tokens,
        events=events,
        roles=ROLES,
        laboratories=labs,
        lab_names={lab["id"]: lab["name"] for lab in labs},
        global_admin=here.is_global,
    )


@bp.post("/admin/laboratories")
@require_global_admin()
def admin_add_laboratory():
    with context.sessions().begin() as session:
        lab = create_laboratory(session, request.form.get("name", ""), actor())
    flash(f"Laboratory {lab.name} created.")
    return redirect(url_for("pages.admin"))


@bp.get("/admin/workers")
@require_global_admin()
def admin_workers():
    # The table is filled and refreshed by workers.js from GET /api/v1/workers.
    return render_template("workers.html", stale_after_s=context.settings().worker_stale_s)


@bp.post("/admin/users")
@require_role(ADMIN)
def admin_add_user():
    lab_id = request.form.get("laboratory_id", 0, type=int)
    with context.sessions().begin() as session:
        user = create_user(
            session,
            request.form.get("name", ""),
            request.form.get("role", ""),
            request.form.get("password", ""),
            actor(),
            scope=scope(),
            # An id past 32 bits names no laboratory (and would overflow the integer).
            laboratory_id=lab_id if 0 < lab_id <= MAX_SMALL_ID else None,
        )
    flash(f"User {user.name} created.")
    return redirect(url_for("pages.admin"))


def _form_ids(name: str) -> list[int]:
    """Checked ids of a multi-select; one past 32 bits names nothing."""
    ids = request.form.getlist(name, type=int)
    return [i for i in ids if 0 < i <= MAX_SMALL_ID]


@bp.post("/admin/users/<int:user_id>")
@require_role(ADMIN)
def admin_change_user(user_id: int):
    with context.sessions().begin() as session:
        user = update_user(
            session,
            tenancy.user_or_404(session, scope(), user_id),
            actor(),
            role=request.form.get("role") or None,
            active={"1": True, "0": False}.get(request.form.get("active", "")),
            scope=scope(),
            # The grant form says so: an empty multi-select sends no field at all.
            laboratories=_form_ids("laboratories") if request.form.get("grants") else None,
        )
    flash(f"User {user.name} updated.")
    return redirect(url_for("pages.admin"))


@bp.post("/admin/tokens")
@require_role(ADMIN)
def admin_add_token():
    with context.sessions().begin() as session:
        user_id = request.form.get("user_id", 0, type=int)
        # An id past 32 bits names nobody (and would overflow the database's integer).
        user = tenancy.user_or_404(session, scope(), user_id if 0 < user_id <= MAX_SMALL_ID else 0)
        row, token = create_token(session, user, actor(), request.form.get("label", ""))
        created = token_json(row)
    # The token is shown on this one response and never again (only its hash is kept).
    return render_template("token_created.html", token=token, row=created)


@bp.post("/admin/tokens/<int:token_id>/revoke")
@require_role(ADMIN)
def admin_revoke_token(token_id: int):
    with context.sessions().begin() as session:
        token = tenancy.token_or_404(session, scope(), token_id)
        revoke_token(session, token, actor())
    flash(f"Token {token.prefix}… revoked.")
    return redirect(url_for("pages.admin"))
