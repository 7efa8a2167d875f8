"""Liveness (``/healthz``: database, broker and image storage usable?) and readiness
(``/readyz``: is scoring work being taken?) for load balancers, monitors and operators.

Unauthenticated, so the answers name what is down and nothing more: host names, ports and
driver messages go to the log, not to whoever asks.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import text

from api import context
from api.workers import current_stall, known_workers, presence_json
from db.models import ImageState
from db.workers import oldest_age_s

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _check_database() -> None:
    with context.sessions()() as session:
        session.execute(text("SELECT 1"))


def _check_broker() -> None:
    with context.celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _check_storage() -> None:
    # Room for at least one more file of the largest size an upload may carry.
    context.store().check_writable(context.settings().max_file_bytes)


CHECKS = (("database", _check_database), ("broker", _check_broker), ("storage", _check_storage))


def _run_checks() -> dict[str, str]:
    body: dict[str, str] = {}
    for name, check in CHECKS:
        try:
            check()
        except Exception as exc:
            log.warning("healthz: %s down: %s: %s", name, type(exc).__name__, exc)
            body[name] = "down"
        else:
            body[name] = "ok"
    return body


@bp.get("/healthz")
def healthz():
    body = _run_checks()
    if "down" in body.values():
        return jsonify(status="unavailable", **body), 503
    return jsonify(status="ok", **body), 200


@bp.get("/readyz")
def readyz():
    """Ready when the services answer, every queue that scoring and the reconciler need has a
    live worker, and queued work is being taken; 503 otherwise, saying which.

    Not for a load balancer's rotation (every API host would leave it when the workers are
    down): for monitors and for an operator's first look.
    """
    body: dict[str, Any] = {"checks": _run_checks()}
    reasons = [f"{name} down" for name, state in body["checks"].items() if state == "down"]
    if body["checks"]["database"] == "ok":
        now = datetime.now(UTC)
        try:
            with context.sessions()() as session:
                workers = known_workers(session, now)
                body["queues"] = presence_json(workers, now)
                body["oldest_queued_age_s"] = oldest_age_s(session, ImageState.QUEUED, now)
                body["oldest_scoring_age_s"] = oldest_age_s(session, ImageState.SCORING, now)
                queued = body["oldest_queued_age_s"] is not None
                stall = current_stall(session, now) if queued else None
        except Exception as exc:
            log.warning("readyz: database down: %s: %s", type(exc).__name__, exc)
            reasons.append("database down")
        else:
            reasons += [
                f"no live worker on queue {q}"
                for q, p in body["queues"].items()
                if not p["processes"]
            ]
            body["stalled"] = stall
            if stall and not any(r.startswith("no live worker") for r in reasons):
                reasons.append("queued work is not being taken")
    body["reasons"] = reasons
    body["status"] = "not_ready" if reasons else "ready"
    return jsonify(body), 503 if reasons else 200
