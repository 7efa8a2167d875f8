"""Every route, fed nested, mistyped and extreme JSON, form and query values: never a 500.

Walks the application's URL map (a new route is fuzzed without being listed here) as an
admin, who passes every role check, so the values reach the views. Bounded: a fixed set of
values, in-process, no network.
"""

from __future__ import annotations

import io
import json
from urllib.parse import quote, urlencode

import pytest

from api import create_app
from db import migrate
from tests.conftest import create_account, token_client

QUERY_PARAMS = (
    "after",
    "after_id",
    "batch",
    "before_id",
    "format",
    "limit",
    "max_p",
    "min_p",
    "n",
    "next",
    "order",
    "since",
    "state",
    "t",
    "threshold",
    "until",
)
EXTREME_TEXT = (
    "",
    "nan",
    "inf",
    "-inf",
    "-1",
    "1e309",
    "9999-12-31",
    "0001-01-01",
    "9999-12-31T23:59:59.999999+14:00",
    "99999999999999999999999",
    "nan:1",
    "0.5:-1",
    "1:99999999999999999999",
    ":",
    "\x00",
    "[]",
    "x" * 5000,
)
INT_PATH_VALUES = ("1", "0", "9223372036854775807", "9223372036854775808", "9" * 30)
TEXT_PATH_VALUES = ("x", "%00", quote("' OR 1=1 --"), "a" * 2000, quote("\U0001f4a9"))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_FIELDS = ("name", "role", "password", "label", "decision", "comment", "expected_seq", "active")
FIELD_VALUES: tuple[object, ...] = (
    [],
    {},
    1,
    1.5,
    True,
    None,
    -(2**70),
    2**70,
    1e308,
    "\x00",
    "x" * 100_000,
    json.loads(_nested(200)),
)
RAW_BODIES = (
    _nested(100_000),
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    "[]",
    '"text"',
    "1",
    "null",
    "1e999",
    "{",
    "\xff\xfe",
)


@pytest.fixture
def fuzz_app(settings, make_jpeg):
    migrate.upgrade(settings.database_url)
    # Token 1 and user 1 belong to someone else, so DELETE /tokens/1 and PATCH /users/1 do not
    # lock the fuzzing admin out half-way.
    create_account(settings.database_url, "bystander", "uploader")
    app = create_app(settings)
    client = token_client(app, settings.database_url, "fuzzer", "admin")
    batch = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(make_jpeg(1)), "a.jpg")]},
        content_type="multipart/form-data",
    ).json["batch_id"]
    return app, client, batch


def _paths(rule, batch_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    if not rule.arguments:
        return [rule.rule]
    # Each value goes into every argument of the rule at once (an image id and a seq alike).
    numbers = all(type(c).__name__ == "IntegerConverter" for c in rule._converters.values())
    paths = []
    for value in INT_PATH_VALUES if numbers else (batch_id, *TEXT_PATH_VALUES):
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<int:{arg}>", value).replace(f"<{arg}>", value)
        paths.append(path)
    return paths


def _requests(rule, batch_id: str):  # type: ignore[no-untyped-def]
    """(method, path, keyword arguments for the test client) to send for one route."""
    for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
        for path in _paths(rule, batch_id):
            if method == "GET":
                yield method, path, {}
                continue
            for raw in RAW_BODIES:
                yield method, path, {"data": raw, "content_type": "application/json"}
            for value in FIELD_VALUES:
                body = {field: value for field in JSON_FIELDS}
                yield method, path, {"json": body}
                form = {f: json.dumps(value)[:1000] for f in (*JSON_FIELDS, "user_id", "username")}
                yield method, path, {"data": form}
        if method == "GET":
            base = _paths(rule, batch_id)[0]
            for param in QUERY_PARAMS:
                for value in EXTREME_TEXT:
                    yield method, f"{base}?{urlencode({param: value})}", {}


def test_no_route_answers_500_to_extreme_input(fuzz_app):
    app, client, batch_id = fuzz_app
    rules = [r for r in app.url_map.iter_rules() if r.endpoint != "static"]
    assert len(rules) > 30
    sent, failures = 0, []
    for rule in rules:
        for method, path, kwargs in _requests(rule, batch_id):
            resp = client.open(path, method=method, **kwargs)
            sent += 1
            # /readyz answers 503 by design here: no worker runs in this test.
            not_ready = rule.endpoint == "health.readyz" and resp.status_code == 503
            if resp.status_code >= 500 and not not_ready:
                failures.append(f"{method} {path[:120]} {str(kwargs)[:120]} -> {resp.status_code}")
    print(f"\n{sent} fuzzed requests over {len(rules)} routes, {len(failures)} server errors")
    assert not failures, "\n".join(failures[:40])
