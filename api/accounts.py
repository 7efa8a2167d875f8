"""Laboratories, users, API tokens and the audit trail as JSON, for admins.

A lab admin sees and manages the accounts, tokens and audit rows of their laboratories only
(``db.tenancy``); a global admin those of every laboratory, and creates laboratories.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api import context
from api.auth import actor, require_global_admin, require_role, scope
from api.errors import ApiError
from api.params import MAX_SMALL_ID, int_arg, json_object, text_field
from db import accounts as domain
from db import tenancy
from db.accounts import create_laboratory, create_token, create_user, revoke_token, update_user
from db.models import ApiToken, AuditEvent, Laboratory, Role, User

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")

ADMIN = Role.ADMIN.value


def user_json(user: User, granted: list[int] | None = None) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "active": user.active,
        "laboratory_id": user.laboratory_id,
        "global_admin": user.global_admin,
        "laboratories": granted or [],  # further laboratories granted (reviewers)
        "created_at": user.created_at.isoformat(),
    }


def laboratory_json(lab: Laboratory) -> dict[str, Any]:
    return {"id": lab.id, "name": lab.name, "created_at": lab.created_at.isoformat()}


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SMALL_ID


def _int_or_none(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and not _is_id(value):
        raise ApiError(400, f"{name} must be a laboratory id")
    return value


def _bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false")
    return value


def _id_list(body: dict[str, Any], name: str) -> list[int] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(_is_id(v) for v in value):
        raise ApiError(400, f"{name} must be a list of laboratory ids")
    return value


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
        "laboratory_id": event.laboratory_id,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_name,
        "action": event.action,
        "target": event.target,
        "details": event.details,
    }


def _body() -> dict[str, Any]:
    return json_object("send a JSON object")


@bp.get("/laboratories")
@require_role(ADMIN)
def list_laboratories():
    with context.sessions()() as session:
        labs = tenancy.laboratories(session, scope())
        return jsonify(laboratories=[laboratory_json(lab) for lab in labs])


@bp.post("/laboratories")
@require_global_admin()
def add_laboratory():
    body = _body()
    with context.sessions().begin() as session:
        lab = create_laboratory(session, text_field(body, "name", "") or "", actor())
        row = laboratory_json(lab)
    return jsonify(row), 201


@bp.get("/users")
@require_role(ADMIN)
def list_users():
    with context.sessions()() as session:
        users = domain.list_users(session, scope())
        return jsonify(users=[user_json(u, tenancy.granted(session, u.id)) for u in users])


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
            scope=scope(),
            laboratory_id=_int_or_none(body, "laboratory_id"),
            global_admin=bool(_bool(body, "global_admin")),
        )
        row = user_json(user)
    return jsonify(row), 201


@bp.patch("/users/<int:user_id>")
@require_role(ADMIN)
def change_user(user_id: int):
    body = _body()
    with context.sessions().begin() as session:
        user = update_user(
            session,
            tenancy.user_or_404(session, scope(), user_id),
            actor(),
            role=text_field(body, "role"),
            active=_bool(body, "active"),
            password=text_field(body, "password"),
            scope=scope(),
            laboratories=_id_list(body, "laboratories"),
        )
        row = user_json(user, tenancy.granted(session, user.id))
    return jsonify(row)


@bp.get("/tokens")
@require_role(ADMIN)
def list_tokens():
    with context.sessions()() as session:
        return jsonify(tokens=[token_json(t) for t in domain.list_tokens(session, scope())])


@bp.post("/users/<int:user_id>/tokens")
@require_role(ADMIN)
def add_token(user_id: int):
    body = _body() if request.content_length else {}
    with context.sessions().begin() as session:
        user = tenancy.user_or_404(session, scope(), user_id)
        row, token = create_token(session, user, actor(), text_field(body, "label", "") or "")
        out = token_json(row) | {"token": token}
    return jsonify(out), 201


@bp.delete("/tokens/<int:token_id>")
@require_role(ADMIN)
def delete_token(token_id: int):
    with context.sessions().begin() as session:
        token = tenancy.token_or_404(session, scope(), token_id)
        revoke_token(session, token, actor())
        out = token_json(token)
    return jsonify(out)


@bp.get("/audit")
@require_role(ADMIN)
def audit_events():
    before = int_arg("before_id", 0)
    limit = int_arg("limit", 200, minimum=1, maximum=1000)
    with context.sessions()() as session:
        events = domain.audit_events(session, scope(), before, limit)
    return jsonify(events=[event_json(e) for e in events])
