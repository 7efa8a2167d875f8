"""Liveness for load balancers and operators: is the database and the broker reachable?"""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from api import context

bp = Blueprint("health", __name__)


def _check_database() -> str | None:
    try:
        with context.sessions()() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_broker() -> str | None:
    try:
        with context.celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@bp.get("/healthz")
def healthz():
    problems = {
        name: err
        for name, err in (("database", _check_database()), ("broker", _check_broker()))
        if err
    }
    body = {
        "database": "down" if "database" in problems else "ok",
        "broker": "down" if "broker" in problems else "ok",
    }
    if problems:
        return jsonify(status="unavailable", problems=problems, **body), 503
    return jsonify(status="ok", **body), 200
