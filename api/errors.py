"""Every error leaves the API as JSON with a message and the right status code."""

from __future__ import annotations

import errno
import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from leukoscreen.storage import StorageUnavailable

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

    @app.errorhandler(OSError)
    def _os_error(exc: OSError):  # type: ignore[no-untyped-def]
        # Werkzeug spools uploaded parts to temporary files while parsing the form (before
        # any view runs): a full disk is the same 507 as a full image store.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _storage_down(StorageUnavailable(exc))
        return _unexpected(exc)

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError):  # type: ignore[no-untyped-def]
        # A value the database refuses (NUL characters, numbers out of range) is the
        # client's input, not an outage.
        log.info("value refused by the database: %s", exc.orig)
        return jsonify(error="a value in the request cannot be stored", status=400), 400

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _db_down(exc: DBAPIError):  # type: ignore[no-untyped-def]
        log.error("database error: %s", exc)
        return jsonify(error="database unavailable, try again shortly", status=503), 503

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error")
        return jsonify(error="internal error", status=500), 500
