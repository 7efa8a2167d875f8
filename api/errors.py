"""Every error leaves the API as JSON with a message and the right status code."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from leukoscreen.storage import StorageUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # type: ignore[no-untyped-def]
        return jsonify(error=exc.message, status=exc.status, **exc.extra), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        response = jsonify(error=exc.description, status=exc.code)
        # Keep headers the status requires, such as Allow on 405.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, exc.code

    @app.errorhandler(StorageUnavailable)
    def _storage_down(exc: StorageUnavailable):  # type: ignore[no-untyped-def]
        # 507 tells a client that retrying will not help until someone frees space.
        status = 507 if exc.full else 503
        log.error("storage error: %s", exc)
        return jsonify(error=str(exc), status=status), status

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _db_down(exc: DBAPIError):  # type: ignore[no-untyped-def]
        log.error("database error: %s", exc)
        return jsonify(error="database unavailable, try again shortly", status=503), 503

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error")
        return jsonify(error="internal error", status=500), 500
