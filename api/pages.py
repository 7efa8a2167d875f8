"""The web pages: laboratory dashboard, upload, single image, review queue and admin.

Pages are thin: they render a shell with the ids they need in data- attributes, and small
scripts in api/static read the JSON API (same session, CSRF header on POST). Nothing is
rendered from user data except through Jinja's autoescaping or the DOM's textContent.
"""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from api import context
from api.accounts import event_json, token_json, user_json
from api.auth import actor, require_role
from api.params import MAX_SMALL_ID
from db.accounts import AccountError, create_token, create_user, revoke_token, update_user
from db.models import ApiToken, AuditEvent, Batch, Role, User
from db.reviews import STATES

bp = Blueprint("pages", __name__)

REVIEWER, ADMIN = Role.REVIEWER.value, Role.ADMIN.value


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
def index():  # type: ignore[no-untyped-def]
    return redirect(url_for("pages.batches"))


@bp.get("/batches")
def batches():  # type: ignore[no-untyped-def]
    return render_template("batches.html")


@bp.get("/batches/<batch_id>")
def batch(batch_id: str):  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        found = session.get(Batch, batch_id)
    if found is None:
        return render_template("error.html", status=404, message=f"no batch {batch_id}"), 404
    return render_template("batch.html", batch=found)


@bp.get("/upload")
def upload():  # type: ignore[no-untyped-def]
    return render_template("upload.html")


@bp.get("/single")
def single():  # type: ignore[no-untyped-def]
    return render_template("single.html")


@bp.get("/review")
@require_role(REVIEWER)
def review():  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        recent = session.execute(
            select(Batch.id, Batch.name).order_by(Batch.created_at.desc()).limit(200)
        ).all()
    return render_template(
        "review.html", mode="queue", batches=recent, states=STATES, args=request.args
    )


@bp.get("/review/sample/<batch_id>")
@require_role(REVIEWER)
def review_sample(batch_id: str):  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        found = session.get(Batch, batch_id)
    if found is None:
        return render_template("error.html", status=404, message=f"no batch {batch_id}"), 404
    return render_template(
        "review.html", mode="sample", batch=found, batches=[], states=STATES, args=request.args
    )


@bp.get("/admin")
@require_role(ADMIN)
def admin():  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        users = [user_json(u) for u in session.scalars(select(User).order_by(User.name))]
        tokens = [
            token_json(t)
            for t in session.scalars(select(ApiToken).order_by(ApiToken.id.desc()).limit(200))
        ]
        events = [
            event_json(e)
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(200))
        ]
    return render_template(
        "admin.html", users=users, tokens=tokens, events=events, roles=[r.value for r in Role]
    )


@bp.post("/admin/users")
@require_role(ADMIN)
def admin_add_user():  # type: ignore[no-untyped-def]
    try:
        with context.sessions().begin() as session:
            user = create_user(
                session,
                request.form.get("name", ""),
                request.form.get("role", ""),
                request.form.get("password", ""),
                actor(),
            )
            flash(f"User {user.name} created.")
    except AccountError as exc:
        flash(f"Not created: {exc}")
    return redirect(url_for("pages.admin"))


@bp.post("/admin/users/<int:user_id>")
@require_role(ADMIN)
def admin_change_user(user_id: int):  # type: ignore[no-untyped-def]
    try:
        with context.sessions().begin() as session:
            user = session.get(User, user_id)
            if user is None:
                raise AccountError(f"no user {user_id}")
            if user.id == actor().id and request.form.get("active") == "0":
                raise AccountError("you cannot deactivate yourself")
            update_user(
                session,
                user,
                actor(),
                role=request.form.get("role") or None,
                active={"1": True, "0": False}.get(request.form.get("active", "")),
            )
            flash(f"User {user.name} updated.")
    except AccountError as exc:
        flash(f"Not changed: {exc}")
    return redirect(url_for("pages.admin"))


@bp.post("/admin/tokens")
@require_role(ADMIN)
def admin_add_token():  # type: ignore[no-untyped-def]
    with context.sessions().begin() as session:
        user_id = request.form.get("user_id", 0, type=int)
        # An id past 32 bits names nobody (and would overflow the database's integer).
        user = session.get(User, user_id) if 0 < user_id <= MAX_SMALL_ID else None
        if user is None:
            flash("Not created: no such user")
            return redirect(url_for("pages.admin"))
        row, token = create_token(session, user, actor(), request.form.get("label", ""))
        created = token_json(row)
    # The token is shown on this one response and never again (only its hash is kept).
    return render_template("token_created.html", token=token, row=created)


@bp.post("/admin/tokens/<int:token_id>/revoke")
@require_role(ADMIN)
def admin_revoke_token(token_id: int):  # type: ignore[no-untyped-def]
    with context.sessions().begin() as session:
        token = session.get(ApiToken, token_id)
        if token is not None:
            revoke_token(session, token, actor())
            flash(f"Token {token.prefix}… revoked.")
    return redirect(url_for("pages.admin"))
