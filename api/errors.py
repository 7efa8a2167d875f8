"""The one place where errors become responses: JSON with a message and the right status code
for the API, an error page or a flash message for the web pages.

Domain errors (``db/errors.py``) carry no HTTP status; ``DOMAIN_STATUS`` gives each kind its
status here, so views raise them (or let them through) instead of catching and re-mapping.
"""

from __future__ import annotations

import errno
import logging
from typing import TypeVar
from urllib.parse import urlsplit

from flask import Flask, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from db.errors import Conflict, DomainError, Gone, Invalid, NotFound
from leukoscreen.storage import StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Invalid: 400,
    Conflict: 409,
    Gone: 410,
}


class ApiError(Exception):
    """An HTTP-level refusal made by the API itself (a malformed request, a missing token)."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def get_or_404(session: Session, model: type[T], ident: object, what: str | None = None) -> T:
    """The row with this primary key, or NotFound ("no batch X"), answered with 404."""
    row = session.get(model, ident)
    if row is None:
        raise NotFound(f"no {what or model.__name__.lower()} {ident}")
    return row


def domain_status(exc: DomainError) -> int:
    return next((s for kind, s in DOMAIN_STATUS.items() if isinstance(exc, kind)), 400)


def _is_page_request() -> bool:
    """Web pages (everything but the JSON API, the probes and the metrics) answer in HTML."""
    return not request.path.startswith(("/api/", "/healthz", "/readyz", "/metrics"))


def _same_site_referrer() -> str:
    """The page a form was posted from, when it is on this site; the home page otherwise."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and referrer.path.startswith("/"):
        return referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return url_for("pages.index")


def _wants_page() -> bool:
    """A person's browser on a web page gets an HTML error; everything else gets JSON."""
    return _is_page_request() and request.accept_mimetypes.accept_html


def register(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        status = domain_status(exc)
        if not _is_page_request():
            return jsonify(error=str(exc), status=status), status
        if request.method == "POST":
            # A form on a page: back to that page, which shows why nothing was done.
            flash(f"Not done: {exc}")
            return redirect(_same_site_referrer())
        return render_template("error.html", status=status, message=str(exc)), status

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=exc.message, status=exc.status, **exc.extra), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
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
    def _storage_down(exc: StorageUnavailable):
        # 507 tells a client that retrying will not help until someone frees space.
        status = 507 if exc.full else 503
        log.error("storage error: %s", exc)
        return jsonify(error=str(exc), status=status), status

    @app.errorhandler(OSError)
    def _os_error(exc: OSError):
        # Werkzeug spools uploaded parts to temporary files while parsing the form (before
        # any view runs): a full disk is the same 507 as a full image store.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _storage_down(StorageUnavailable(exc))
        return _unexpected(exc)

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError):
        # A value the database refuses (NUL characters, numbers out of range) is the
        # client's input, not an outage.
        log.info("value refused by the database: %s", exc.orig)
        return jsonify(error="a value in the request cannot be stored", status=400), 400

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _db_down(exc: DBAPIError):
        log.error("database error: %s", exc)
        return jsonify(error="database unavailable, try again shortly", status=503), 503

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify(error="internal error", status=500), 500
