"""Outbound webhooks as JSON, for admins: configure receivers, read the delivery log, re-send."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api import context
from api.auth import actor, require_role
from api.errors import ApiError, get_or_404
from api.params import int_arg, json_object, text_field
from db import webhooks as domain
from db.audit import record_event
from db.lifecycle import resend_delivery
from db.models import DeliveryState, Role, Webhook, WebhookDelivery

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")

ADMIN = Role.ADMIN.value


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": webhook.url,
        "events": webhook.events,
        "active": webhook.active,
        "created_at": webhook.created_at.isoformat(),
    }


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "event": delivery.event,
        "subject": delivery.subject,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at.isoformat(),
        "updated_at": delivery.updated_at.isoformat(),
        "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
    }


@bp.get("/webhooks")
@require_role(ADMIN)
def list_webhooks():
    with context.sessions()() as session:
        return jsonify(webhooks=[webhook_json(w) for w in domain.list_webhooks(session)])


@bp.post("/webhooks")
@require_role(ADMIN)
def add_webhook():
    body = json_object("send a JSON object with url and events")
    with context.sessions().begin() as session:
        created = domain.create_webhook(
            session,
            text_field(body, "url", "") or "",
            body.get("events"),
            context.settings().secret_key,
            actor(),
        )
        # The secret is shown in this one answer and never again (only its ciphertext is kept).
        out = webhook_json(created.webhook) | {"secret": created.secret}
    return jsonify(out), 201


@bp.delete("/webhooks/<int:webhook_id>")
@require_role(ADMIN)
def deactivate_webhook(webhook_id: int):
    with context.sessions().begin() as session:
        webhook = domain.deactivate_webhook(
            session, get_or_404(session, Webhook, webhook_id), actor()
        )
        out = webhook_json(webhook)
    return jsonify(out)


@bp.get("/webhooks/<int:webhook_id>/deliveries")
@require_role(ADMIN)
def webhook_deliveries(webhook_id: int):
    limit = int_arg("limit", 100, minimum=1, maximum=1000)
    state = _state_arg()
    with context.sessions()() as session:
        webhook = get_or_404(session, Webhook, webhook_id)
        rows = domain.deliveries(session, webhook.id, limit, state)
        return jsonify(webhook=webhook_json(webhook), deliveries=[delivery_json(d) for d in rows])


def _state_arg() -> str | None:
    state = request.args.get("state") or None
    if state is not None and state not in {s.value for s in DeliveryState}:
        raise ApiError(400, f"state must be one of {', '.join(s.value for s in DeliveryState)}")
    return state


@bp.post("/webhook-deliveries/<delivery_id>/resend")
@require_role(ADMIN)
def resend(delivery_id: str):
    with context.sessions().begin() as session:
        delivery = get_or_404(session, WebhookDelivery, delivery_id, "delivery")
        resend_delivery(session, delivery)
        record_event(
            session,
            actor(),
            "webhook.resend",
            f"delivery:{delivery.id}",
            webhook_id=delivery.webhook_id,
            event=delivery.event,
            subject=delivery.subject,
        )
        out = delivery_json(delivery)
    # Enqueued by the session's after-commit hook (worker.dispatch.watch_outbox).
    return jsonify(out), 202
