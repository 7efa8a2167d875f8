"""Users, API tokens and the audit trail as JSON, for admins."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api import context
from api.auth import actor, require_role
from api.errors import ApiError, get_or_404
from api.params import int_arg, json_object, text_field
from db import accounts as domain
from db.accounts import create_token, create_user, revoke_token, update_user
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
def list_users():
    with context.sessions()() as session:
        return jsonify(users=[user_json(u) for u in domain.list_users(session)])


@bp.post("/users")
@require_role(ADMIN)
def add_user():
    body = _body()
    with context.sessions().begin() as session:
        user = create_user(
            session,
            text_field(body, "name", "") or "",
            text_field(body, "role", "") or "",
            text_field(body, "password", "") or "",
            actor(),
        )
        row = user_json(user)
    return jsonify(row), 201


@bp.patch("/users/<int:user_id>")
@require_role(ADMIN)
def change_user(user_id: int):
    body = _body()
    active = body.get("active")
    if active is not None and not isinstance(active, bool):
        raise ApiError(400, "active must be true or false")
    with context.sessions().begin() as session:
        user = update_user(
            session,
            get_or_404(session, User, user_id),
            actor(),
            role=text_field(body, "role"),
            active=active,
            password=text_field(body, "password"),
        )
        row = user_json(user)
    return jsonify(row)


@bp.get("/tokens")
@require_role(ADMIN)
def list_tokens():
    with context.sessions()() as session:
        return jsonify(tokens=[token_json(t) for t in domain.list_tokens(session)])


@bp.post("/users/<int:user_id>/tokens")
@require_role(ADMIN)
def add_token(user_id: int):
    body = _body() if request.content_length else {}
    with context.sessions().begin() as session:
        user = get_or_404(session, User, user_id)
        row, token = create_token(session, user, actor(), text_field(body, "label", "") or "")
        out = token_json(row) | {"token": token}
    return jsonify(out), 201


@bp.delete("/tokens/<int:token_id>")
@require_role(ADMIN)
def delete_token(token_id: int):
    with context.sessions().begin() as session:
        token = get_or_404(session, ApiToken, token_id, "token")
        revoke_token(session, token, actor())
        out = token_json(token)
    return jsonify(out)


@bp.get("/audit")
@require_role(ADMIN)
def audit_events():
    before = int_arg("before_id", 0)
    limit = int_arg("limit", 200, minimum=1, maximum=1000)
    with context.sessions()() as session:
        events = domain.audit_events(session, before, limit)
    return jsonify(events=[event_json(e) for e in events])
