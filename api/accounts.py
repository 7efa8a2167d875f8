"""Users, API tokens and the audit trail as JSON, for admins."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api import context
from api.auth import actor, require_role
from api.errors import ApiError
from api.params import int_arg, json_object, text_field
from db.accounts import AccountError, create_token, create_user, revoke_token, update_user
from db.models import ApiToken, AuditEvent, Role, User

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")

ADMIN = Role.ADMIN.value


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "active": user.active,
        "created_at": user.created_at.isoformat(),
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": token.user.name,
        "prefix": token.prefix,
        "label": token.label,
        "created_at": token.created_at.isoformat(),
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_name,
        "action": event.action,
        "target": event.target,
        "details": event.details,
    }


def _body() -> dict[str, Any]:
    return json_object("send a JSON object")


@bp.get("/users")
@require_role(ADMIN)
def list_users():  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        return jsonify(
            users=[user_json(u) for u in session.scalars(select(User).order_by(User.name))]
        )


@bp.post("/users")
@require_role(ADMIN)
def add_user():  # type: ignore[no-untyped-def]
    body = _body()
    try:
        with context.sessions().begin() as session:
            user = create_user(
                session,
                text_field(body, "name", "") or "",
                text_field(body, "role", "") or "",
                text_field(body, "password", "") or "",
                actor(),
            )
            row = user_json(user)
    except AccountError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(row), 201


@bp.patch("/users/<int:user_id>")
@require_role(ADMIN)
def change_user(user_id: int):  # type: ignore[no-untyped-def]
    body = _body()
    active = body.get("active")
    if active is not None and not isinstance(active, bool):
        raise ApiError(400, "active must be true or false")
    try:
        with context.sessions().begin() as session:
            user = session.get(User, user_id)
            if user is None:
                raise ApiError(404, f"no user {user_id}")
            update_user(
                session,
                user,
                actor(),
                role=text_field(body, "role"),
                active=active,
                password=text_field(body, "password"),
            )
            row = user_json(user)
    except AccountError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(row)


@bp.get("/tokens")
@require_role(ADMIN)
def list_tokens():  # type: ignore[no-untyped-def]
    with context.sessions()() as session:
        tokens = session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
        return jsonify(tokens=[token_json(t) for t in tokens])


@bp.post("/users/<int:user_id>/tokens")
@require_role(ADMIN)
def add_token(user_id: int):  # type: ignore[no-untyped-def]
    body = _body() if request.content_length else {}
    with context.sessions().begin() as session:
        user = session.get(User, user_id)
        if user is None:
            raise ApiError(404, f"no user {user_id}")
        row, token = create_token(session, user, actor(), text_field(body, "label", "") or "")
        out = token_json(row) | {"token": token}
    return jsonify(out), 201


@bp.delete("/tokens/<int:token_id>")
@require_role(ADMIN)
def delete_token(token_id: int):  # type: ignore[no-untyped-def]
    with context.sessions().begin() as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            raise ApiError(404, f"no token {token_id}")
        revoke_token(session, token, actor())
        out = token_json(token)
    return jsonify(out)


@bp.get("/audit")
@require_role(ADMIN)
def audit_events():  # type: ignore[no-untyped-def]
    before = int_arg("before_id", 0)
    limit = int_arg("limit", 200, minimum=1, maximum=1000)
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before:
        stmt = stmt.where(AuditEvent.id < before)
    with context.sessions()() as session:
        events = session.scalars(stmt).all()
    return jsonify(events=[event_json(e) for e in events])
