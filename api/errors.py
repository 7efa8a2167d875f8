"""Every error leaves the API as JSON with a message and the right status code."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _wants_page() -> bool:
    """A person's browser on a web page gets an HTML error; everything else gets JSON."""
    return not request.path.startswith(("/api/", "/healthz")) and (
        request.accept_mimetypes.accept_html
    )


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # type: ignore[no-untyped-def]
        return jsonify(error=exc.message, status=exc.status, **exc.extra), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        if _wants_page():
            return render_template("error.html", status=exc.code, message=exc.description), (
                exc.code
            )
        return jsonify(error=exc.description, status=exc.code), exc.code

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _db_down(exc: DBAPIError):  # type: ignore[no-untyped-def]
        log.error("database error: %s", exc)
        return jsonify(error="database unavailable, try again shortly", status=503), 503

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error")
        return jsonify(error="internal error", status=500), 500
