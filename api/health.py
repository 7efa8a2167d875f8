"""Liveness for load balancers and operators: database, broker and image storage usable?

Unauthenticated, so the answer names what is down and nothing more: host names, ports and
driver messages go to the log, not to whoever asks.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import text

from api import context

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


@bp.get("/healthz")
def healthz():
    body: dict[str, str] = {}
    for name, check in CHECKS:
        try:
            check()
        except Exception as exc:
            log.warning("healthz: %s down: %s: %s", name, type(exc).__name__, exc)
            body[name] = "down"
        else:
            body[name] = "ok"
    if "down" in body.values():
        return jsonify(status="unavailable", **body), 503
    return jsonify(status="ok", **body), 200
