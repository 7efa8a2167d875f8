"""A request id for every request, on every log line it causes and on the tasks it enqueues.

A caller's ``X-Request-ID`` is kept when it looks like an id (a proxy or the submit client may
set one to match its own logs); otherwise one is made. The answer carries it back.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from leukoscreen import logs

HEADER = "X-Request-ID"
# Anything else could forge log structure (newlines, quotes) or flood a line.
ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _begin() -> None:
    sent = request.headers.get(HEADER, "")
    g.request_id = sent if ACCEPTED_ID.fullmatch(sent) else uuid.uuid4().hex
    g.log_token = logs.bind(request_id=g.request_id)


def _answer(response: Response) -> Response:
    if "request_id" in g:
        response.headers[HEADER] = g.request_id
    return response


def _end(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        logs.unbind(token)


def register(app: Flask) -> None:
    # Before authentication, so that a refused request's lines carry the id too.
    app.before_request(_begin)
    app.after_request(_answer)
    app.teardown_request(_end)
