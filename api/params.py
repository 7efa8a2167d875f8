"""Query parameters: malformed values are the client's error (400), never silently defaulted."""

from __future__ import annotations

from typing import Any

from flask import request

from api.errors import ApiError
from db.errors import NotFound

# Ids are 64-bit integers in the database; larger numbers can only be "not found".
MAX_ID = 2**63 - 1
# Users, tokens and webhooks are few, and an image has few decisions (review.seq): 32-bit.
MAX_SMALL_ID = 2**31 - 1
SMALL_IDS = frozenset({"user_id", "token_id", "webhook_id", "seq"})
# Bodies of every request but an upload: a JSON object or a page's form. MAX_CONTENT_LENGTH
# (LEUKOSCREEN_MAX_REQUEST_BYTES, gigabytes) is for images; a JSON body that large would be
# parsed whole in memory, and the sign-in form's parts spooled to disk before any check.
MAX_BODY_BYTES = 1024 * 1024
UPLOAD_ENDPOINTS = frozenset({"batches.create_batch", "batches.add_to_batch"})


def id_limit(name: str) -> int:
    """The largest value the database can hold for the URL id ``name``."""
    return MAX_SMALL_ID if name in SMALL_IDS else MAX_ID


def reject_out_of_range_ids(endpoint: str | None, values: dict[str, object] | None) -> None:
    """A URL id too large for the database can only name nothing: 404, not a database error."""
    for name, value in (values or {}).items():
        if isinstance(value, int) and value > id_limit(name):
            raise NotFound("no such record")


def limit_request_body() -> None:
    """Before any view (and the CSRF check, which reads a form): a body over the limit is a
    413 when read, never read whole."""
    if request.endpoint not in UPLOAD_ENDPOINTS:
        request.max_content_length = MAX_BODY_BYTES


def int_arg(name: str, default: int, minimum: int = 0, maximum: int = MAX_ID) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value


def json_object(hint: str) -> dict[str, Any]:
    """The request's JSON object, or 400 with ``hint`` (never a 500 for any body)."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        # json.loads recurses once per nesting level: a deep enough body exhausts the stack.
        raise ApiError(400, "JSON nested too deeply; " + hint) from None
    if not isinstance(body, dict):
        raise ApiError(400, hint)
    return body


def text_field(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """A JSON field that must be text when given: a list, number or object is a 400."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be text, not {type(value).__name__}")
    return value
