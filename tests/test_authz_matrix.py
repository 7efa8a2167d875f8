"""Who may call what: every route of the app, for every role, against one explicit table.

A route missing from MATRIX fails the test, so a new endpoint cannot ship without someone
deciding who may call it. Requests are valid and use real ids, so a status here is the
authorisation decision (or the success code), not a 404 or a 400.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import update

from api import create_app
from db.accounts import create_token, find_user
from db.lifecycle import emit
from db.models import Image, WebhookEvent
from db.session import engine_for, session_factory
from db.webhooks import create_webhook
from tests.conftest import PASSWORD, create_account, csrf_token, smear_like_jpeg
from tests.lisdata import scored_specimen, sign_specimen
from tests.reviewdata import seed_scored

ROLES = ("anonymous", "uploader", "reviewer", "admin")
LOGIN = "login"  # a 302 to the login page

# (method, rule) -> expected status for (anonymous, uploader, reviewer, admin).
MATRIX: dict[tuple[str, str], tuple[int | str, int, int, int]] = {
    # public
    ("GET", "/healthz"): (200, 200, 200, 200),
    # public, like /healthz; no worker runs in this test, hence "not ready"
    ("GET", "/readyz"): (503, 503, 503, 503),
    ("GET", "/login"): (200, 200, 200, 200),
    ("POST", "/login"): (401, 302, 302, 302),  # anonymous: a wrong password
    ("GET", "/static/<path:filename>"): (200, 200, 200, 200),
    # pages for everyone signed in
    ("GET", "/"): (LOGIN, 302, 302, 302),
    ("GET", "/batches"): (LOGIN, 200, 200, 200),
    ("GET", "/batches/<batch_id>"): (LOGIN, 200, 200, 200),
    ("GET", "/upload"): (LOGIN, 200, 200, 200),
    ("GET", "/single"): (LOGIN, 200, 200, 200),
    ("GET", "/specimens"): (LOGIN, 200, 200, 200),
    ("GET", "/specimens/<specimen_id>"): (LOGIN, 200, 200, 200),
    ("POST", "/specimens/<specimen_id>/sign"): (LOGIN, 403, 302, 302),
    ("POST", "/logout"): (LOGIN, 302, 302, 302),
    # reviewer pages
    ("GET", "/review"): (LOGIN, 403, 200, 200),
    ("GET", "/review/sample/<batch_id>"): (LOGIN, 403, 200, 200),
    # admin pages
    ("GET", "/admin"): (LOGIN, 403, 403, 200),
    ("GET", "/admin/workers"): (LOGIN, 403, 403, 200),
    ("POST", "/admin/users"): (LOGIN, 403, 403, 302),
    ("POST", "/admin/users/<int:user_id>"): (LOGIN, 403, 403, 302),
    ("POST", "/admin/tokens"): (LOGIN, 403, 403, 200),
    ("POST", "/admin/tokens/<int:token_id>/revoke"): (LOGIN, 403, 403, 302),
    # JSON API for everyone signed in
    ("GET", "/api/v1/openapi.json"): (401, 200, 200, 200),
    ("GET", "/api/v1/batches"): (401, 200, 200, 200),
    ("POST", "/api/v1/batches"): (401, 202, 202, 202),
    ("GET", "/api/v1/batches/<batch_id>"): (401, 200, 200, 200),
    ("POST", "/api/v1/batches/<batch_id>/images"): (401, 202, 202, 202),
    ("GET", "/api/v1/batches/<batch_id>/results"): (401, 200, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/images"): (401, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>"): (401, 200, 200, 200),
    ("GET", "/api/v1/specimens"): (401, 200, 200, 200),
    ("GET", "/api/v1/specimens/<specimen_id>"): (401, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>/thumbnail"): (401, 200, 200, 200),
    # reports for other systems: whoever may export results may download them
    ("GET", "/api/v1/specimens/<specimen_id>/fhir"): (401, 200, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/fhir"): (401, 200, 200, 200),
    # JSON API for reviewers
    ("GET", "/api/v1/review/queue"): (401, 403, 200, 200),
    ("GET", "/api/v1/review/items/<int:image_id>"): (401, 403, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>/reviews"): (401, 403, 200, 200),
    ("POST", "/api/v1/images/<int:image_id>/reviews"): (401, 403, 201, 201),
    # Routes run in rule order: the decision just posted above is the caller's decision 1.
    ("POST", "/api/v1/images/<int:image_id>/reviews/<int:seq>/undo"): (401, 403, 201, 201),
    ("GET", "/api/v1/batches/<batch_id>/threshold"): (401, 403, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/sample"): (401, 403, 200, 200),
    ("POST", "/api/v1/specimens/<specimen_id>/signoffs"): (401, 403, 201, 201),
    # JSON API for admins
    ("GET", "/api/v1/users"): (401, 403, 403, 200),
    ("POST", "/api/v1/users"): (401, 403, 403, 201),
    ("PATCH", "/api/v1/users/<int:user_id>"): (401, 403, 403, 200),
    ("POST", "/api/v1/users/<int:user_id>/tokens"): (401, 403, 403, 201),
    ("GET", "/api/v1/tokens"): (401, 403, 403, 200),
    ("DELETE", "/api/v1/tokens/<int:token_id>"): (401, 403, 403, 200),
    ("GET", "/api/v1/audit"): (401, 403, 403, 200),
    ("GET", "/api/v1/webhooks"): (401, 403, 403, 200),
    ("POST", "/api/v1/webhooks"): (401, 403, 403, 201),
    ("DELETE", "/api/v1/webhooks/<int:webhook_id>"): (401, 403, 403, 200),
    ("GET", "/api/v1/webhooks/<int:webhook_id>/deliveries"): (401, 403, 403, 200),
    ("POST", "/api/v1/webhook-deliveries/<delivery_id>/resend"): (401, 403, 403, 202),
    ("GET", "/api/v1/workers"): (401, 403, 403, 200),
    # Prometheus: the metrics token or an admin; a JSON 401 rather than a login page
    ("GET", "/metrics"): (401, 403, 403, 200),
}

_serial = itertools.count(1000)


@dataclass
class Ids:
    batch_id: str
    image_id: int
    user_id: int
    token_ids: dict[str, int]  # rule -> a token that route may revoke
    signed_specimen: str = ""
    webhook_id: int = 0
    delivery_id: str = ""


def _body(method: str, rule: str, role: str) -> dict[str, Any]:
    """A valid request body for this route (unique where the route needs unique data)."""
    n = next(_serial)
    upload = {"images": [(io.BytesIO(smear_like_jpeg(n)), f"cell{n}.jpg")]}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/login"): {
            "data": {"username": role, "password": PASSWORD if role != "anonymous" else "x"}
        },
        ("POST", "/api/v1/batches"): {"data": upload},
        ("POST", "/api/v1/batches/<batch_id>/images"): {"data": upload},
        ("POST", "/api/v1/images/<int:image_id>/reviews"): {"json": {"decision": "confirmed"}},
        ("POST", "/api/v1/users"): {
            "json": {"name": f"new{n}", "role": "uploader", "password": PASSWORD}
        },
        ("PATCH", "/api/v1/users/<int:user_id>"): {"json": {"role": "reviewer"}},
        ("POST", "/api/v1/users/<int:user_id>/tokens"): {"json": {"label": f"t{n}"}},
        ("POST", "/admin/users"): {
            "data": {"name": f"page{n}", "role": "uploader", "password": PASSWORD}
        },
        ("POST", "/admin/users/<int:user_id>"): {"data": {"role": "uploader"}},
        ("POST", "/admin/tokens"): {"data": {"user_id": "0", "label": f"p{n}"}},
        ("POST", "/api/v1/specimens/<specimen_id>/signoffs"): {
            "json": {"interpretation": "no_leukemia_detected"}
        },
        ("POST", "/specimens/<specimen_id>/sign"): {
            "data": {"interpretation": "no_leukemia_detected"}
        },
        ("POST", "/api/v1/webhooks"): {
            "json": {"url": f"https://lis.example/hook{n}", "events": ["specimen.signed"]}
        },
    }
    return bodies.get((method, rule), {})


def _path(rule: str, ids: Ids) -> str:
    path = rule.replace("<batch_id>", ids.batch_id).replace("<path:filename>", "common.js")
    path = path.replace("<int:image_id>", str(ids.image_id))
    path = path.replace("<int:user_id>", str(ids.user_id)).replace("<int:seq>", "1")
    path = path.replace("<int:token_id>", str(ids.token_ids.get(rule, 0)))
    path = path.replace("<int:webhook_id>", str(ids.webhook_id))
    path = path.replace("<delivery_id>", ids.delivery_id)
    assert "<" not in path, f"no real id for {rule}: extend _path"
    query = {
        "/api/v1/batches/<batch_id>/threshold": "?t=0.3",
        "/api/v1/batches/<batch_id>/sample": "?n=5",
    }
    return path + query.get(rule, "")


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    html = client.get("/login").get_data(as_text=True)
    return csrf_token(html)


def _session(app, role: str):  # type: ignore[no-untyped-def]
    """A browser-like client: signed in through the form (anonymous: not signed in)."""
    client = app.test_client()
    client.csrf = _csrf(client)  # type: ignore[attr-defined]
    if role != "anonymous":
        resp = client.post(
            "/login", data={"username": role, "password": PASSWORD, "csrf_token": client.csrf}
        )
        assert resp.status_code == 302
        client.csrf = _csrf(client)  # type: ignore[attr-defined]
    return client


def _request(app, clients, tokens, role: str, method: str, rule: str, ids: Ids):  # type: ignore[no-untyped-def]
    # Each role signs a specimen of its own (a second signature would be a 409).
    page_or_api = "page" if not rule.startswith("/api/") else "api"
    specimen = f"SPEC-{role}-{page_or_api}"
    if rule.endswith("/fhir"):
        specimen = ids.signed_specimen  # a report exists once signed (409 before)
    path, body = _path(rule.replace("<specimen_id>", specimen), ids), _body(method, rule, role)
    if rule == "/admin/tokens" and "data" in body:
        body["data"]["user_id"] = str(ids.user_id)
    if path.startswith("/api/") and role != "anonymous":
        # The JSON API as scripts use it: a bearer token, no CSRF token needed.
        headers = {"Authorization": f"Bearer {tokens[role]}"}
        return app.test_client().open(path, method=method, headers=headers, **body)
    # Pages (and anonymous API calls) as a browser sends them, CSRF token included.
    client = clients[role]
    if rule in ("/logout", "/login"):
        client = _session(app, "anonymous" if rule == "/login" else role)
    if method != "GET":
        if "json" in body:
            return client.open(path, method=method, headers={"X-CSRFToken": client.csrf}, **body)
        body.setdefault("data", {})["csrf_token"] = client.csrf
    resp = client.open(path, method=method, **body)
    if rule == "/logout" and role != "anonymous":
        # Signing out ends every session of the user, the shared page client's included.
        clients[role] = _session(app, role)
    return resp


def _check(resp, expected: int | str, cell: str) -> None:  # type: ignore[no-untyped-def]
    if expected == LOGIN:
        assert resp.status_code == 302, (cell, resp.status_code)
        assert resp.headers["Location"].startswith("/login"), (cell, resp.headers["Location"])
        return
    assert resp.status_code == expected, (cell, resp.status_code, resp.get_data(as_text=True)[:300])
    if resp.status_code in (401, 403) and cell.split()[2].startswith("/api/"):
        assert resp.is_json and resp.json["error"], cell


def _routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


@pytest.fixture
def world(db_settings):  # type: ignore[no-untyped-def]
    app = create_app(db_settings)
    url = db_settings.database_url
    tokens = {role: create_account(url, role, role) for role in ROLES[1:]}
    create_account(url, "target", "uploader")
    batch_id, image_ids = seed_scored(
        url,
        [0.9, 0.1],
        storage_dir=db_settings.storage_dir,
        blobs=[smear_like_jpeg(1), smear_like_jpeg(2)],
    )
    # A cleared image per role and surface, each its own specimen, ready to sign.
    specimens = [f"SPEC-{role}-{where}" for role in ROLES for where in ("page", "api")]
    _, cleared = seed_scored(url, [0.1] * len(specimens))
    with session_factory(engine_for(url)).begin() as s:
        for image_id, specimen in zip(cleared, specimens, strict=True):
            s.execute(update(Image).where(Image.id == image_id).values(specimen_id=specimen))
    with session_factory(engine_for(url)).begin() as s:
        target = find_user(s, "target")
        assert target is not None
        revocable = {
            rule: create_token(s, target, None, rule)[0]
            for rule in ("/api/v1/tokens/<int:token_id>", "/admin/tokens/<int:token_id>/revoke")
        }
        s.flush()
        ids = Ids(batch_id, image_ids[0], target.id, {r: t.id for r, t in revocable.items()})
    ids.signed_specimen = "SPEC-SIGNED"
    scored_specimen(url, ids.signed_specimen, [0.1])
    sign_specimen(url, ids.signed_specimen, "no_leukemia_detected")
    with session_factory(engine_for(url)).begin() as s:
        hook = create_webhook(
            s, "https://lis.example/hook", ["batch.complete"], db_settings.secret_key, None
        ).webhook
        s.flush()
        ids.webhook_id = hook.id
        ids.delivery_id = emit(s, WebhookEvent.BATCH_COMPLETE, "authz", {})[0]
    clients = {role: _session(app, role) for role in ROLES}
    return app, clients, tokens, ids


def test_every_route_is_in_the_authorisation_table(world):
    app = world[0]
    routes = _routes(app)
    missing = sorted(routes - MATRIX.keys())
    assert not missing, f"routes with no authorisation decision in MATRIX: {missing}"
    stale = sorted(MATRIX.keys() - routes)
    assert not stale, f"MATRIX names routes the app does not have: {stale}"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_the_status_in_the_table(world, role):
    app, clients, tokens, ids = world
    column = ROLES.index(role)
    checked = 0
    for method, rule in sorted(_routes(app), key=lambda r: (r[1], r[0])):
        expected = MATRIX[(method, rule)][column]
        resp = _request(app, clients, tokens, role, method, rule, ids)
        _check(resp, expected, f"{role} {method} {rule}")
        checked += 1
    assert checked == len(MATRIX)
