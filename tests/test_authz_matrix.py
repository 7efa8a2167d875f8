"""Who may call what: every route of the app, for every role, against one explicit table;
and what a user of another laboratory gets for every route, against a second one.

A route missing from MATRIX or CROSS fails the test, so a new endpoint cannot ship without
someone deciding who may call it and how it keeps laboratories apart. MATRIX requests are
valid and use real ids of the principals' own laboratory (A), so a status there is the
authorisation decision (or the success code), not a 404 or a 400. CROSS sends the same
requests with lab A's ids as users of laboratory B.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, update

from api import create_app
from db.accounts import create_laboratory, create_token, create_user, find_laboratory, find_user
from db.lifecycle import emit
from db.models import ApiToken, Image, Review, SpecimenSignoff, Webhook, WebhookEvent
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from db.webhooks import create_webhook
from tests.conftest import PASSWORD, create_account, csrf_token, smear_like_jpeg
from tests.lisdata import scored_specimen, sign_specimen
from tests.reviewdata import give_heatmap, seed_scored

ROLES = ("anonymous", "uploader", "reviewer", "admin", "global")  # global: a global admin
LOGIN = "login"  # a 302 to the login page

# (method, rule) -> expected status for (anonymous, uploader, reviewer, lab admin, global admin).
MATRIX: dict[tuple[str, str], tuple[int | str, int, int, int, int]] = {
    # public
    ("GET", "/healthz"): (200, 200, 200, 200, 200),
    # public, like /healthz; no worker runs in this test, hence "not ready"
    ("GET", "/readyz"): (503, 503, 503, 503, 503),
    ("GET", "/login"): (200, 200, 200, 200, 200),
    ("POST", "/login"): (401, 302, 302, 302, 302),  # anonymous: a wrong password
    ("GET", "/static/<path:filename>"): (200, 200, 200, 200, 200),
    # pages for everyone signed in
    ("GET", "/"): (LOGIN, 302, 302, 302, 302),
    ("GET", "/batches"): (LOGIN, 200, 200, 200, 200),
    ("GET", "/batches/<batch_id>"): (LOGIN, 200, 200, 200, 200),
    ("GET", "/upload"): (LOGIN, 200, 200, 200, 200),
    ("GET", "/single"): (LOGIN, 200, 200, 200, 200),
    ("GET", "/specimens"): (LOGIN, 200, 200, 200, 200),
    ("GET", "/specimens/<specimen_id>"): (LOGIN, 200, 200, 200, 200),
    ("POST", "/specimens/<specimen_id>/sign"): (LOGIN, 403, 302, 302, 302),
    ("POST", "/logout"): (LOGIN, 302, 302, 302, 302),
    # reviewer pages
    ("GET", "/review"): (LOGIN, 403, 200, 200, 200),
    ("GET", "/review/sample/<batch_id>"): (LOGIN, 403, 200, 200, 200),
    # admin pages
    ("GET", "/admin"): (LOGIN, 403, 403, 200, 200),
    # worker status and metrics span every laboratory: global admins only
    ("GET", "/admin/workers"): (LOGIN, 403, 403, 403, 200),
    ("POST", "/admin/users"): (LOGIN, 403, 403, 302, 302),
    ("POST", "/admin/users/<int:user_id>"): (LOGIN, 403, 403, 302, 302),
    ("POST", "/admin/tokens"): (LOGIN, 403, 403, 200, 200),
    ("POST", "/admin/tokens/<int:token_id>/revoke"): (LOGIN, 403, 403, 302, 302),
    ("POST", "/admin/laboratories"): (LOGIN, 403, 403, 403, 302),
    # JSON API for everyone signed in
    ("GET", "/api/v1/openapi.json"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/batches"): (401, 200, 200, 200, 200),
    ("POST", "/api/v1/batches"): (401, 202, 202, 202, 202),
    ("GET", "/api/v1/batches/<batch_id>"): (401, 200, 200, 200, 200),
    ("POST", "/api/v1/batches/<batch_id>/images"): (401, 202, 202, 202, 202),
    ("GET", "/api/v1/batches/<batch_id>/results"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/images"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>/thumbnail"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>/heatmap"): (401, 200, 200, 200, 200),
    # asking a worker for a missing heatmap: reviewers (this one has it already: 200)
    ("POST", "/api/v1/images/<int:image_id>/heatmap"): (401, 403, 200, 200, 200),
    ("GET", "/api/v1/specimens"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/specimens/<specimen_id>"): (401, 200, 200, 200, 200),
    # reports for other systems: whoever may export results may download them
    ("GET", "/api/v1/specimens/<specimen_id>/fhir"): (401, 200, 200, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/fhir"): (401, 200, 200, 200, 200),
    # JSON API for reviewers
    ("GET", "/api/v1/review/queue"): (401, 403, 200, 200, 200),
    ("GET", "/api/v1/review/items/<int:image_id>"): (401, 403, 200, 200, 200),
    ("GET", "/api/v1/images/<int:image_id>/reviews"): (401, 403, 200, 200, 200),
    ("POST", "/api/v1/images/<int:image_id>/reviews"): (401, 403, 201, 201, 201),
    # Routes run in rule order: the decision just posted above is the caller's decision 1.
    ("POST", "/api/v1/images/<int:image_id>/reviews/<int:seq>/undo"): (401, 403, 201, 201, 201),
    ("GET", "/api/v1/batches/<batch_id>/threshold"): (401, 403, 200, 200, 200),
    ("GET", "/api/v1/batches/<batch_id>/sample"): (401, 403, 200, 200, 200),
    ("POST", "/api/v1/specimens/<specimen_id>/signoffs"): (401, 403, 201, 201, 201),
    # JSON API for admins
    ("GET", "/api/v1/users"): (401, 403, 403, 200, 200),
    ("POST", "/api/v1/users"): (401, 403, 403, 201, 201),
    ("PATCH", "/api/v1/users/<int:user_id>"): (401, 403, 403, 200, 200),
    ("POST", "/api/v1/users/<int:user_id>/tokens"): (401, 403, 403, 201, 201),
    ("GET", "/api/v1/tokens"): (401, 403, 403, 200, 200),
    ("DELETE", "/api/v1/tokens/<int:token_id>"): (401, 403, 403, 200, 200),
    ("GET", "/api/v1/audit"): (401, 403, 403, 200, 200),
    ("GET", "/api/v1/webhooks"): (401, 403, 403, 200, 200),
    ("POST", "/api/v1/webhooks"): (401, 403, 403, 201, 201),
    ("DELETE", "/api/v1/webhooks/<int:webhook_id>"): (401, 403, 403, 200, 200),
    ("GET", "/api/v1/webhooks/<int:webhook_id>/deliveries"): (401, 403, 403, 200, 200),
    ("POST", "/api/v1/webhook-deliveries/<delivery_id>/resend"): (401, 403, 403, 202, 202),
    ("GET", "/api/v1/workers"): (401, 403, 403, 403, 200),
    # Prometheus: the metrics token or a global admin; a JSON 401 rather than a login page
    ("GET", "/metrics"): (401, 403, 403, 403, 200),
    ("GET", "/api/v1/laboratories"): (401, 403, 403, 200, 200),
    ("POST", "/api/v1/laboratories"): (401, 403, 403, 403, 201),
}

# What a user of laboratory B gets, sending the MATRIX request with laboratory A's ids, where
# their role lets them call the route at all (otherwise the MATRIX status, 401/403/login):
SAME = "same"  # the MATRIX status: the route reads or names no object of another laboratory
HIDDEN = "404"  # 404, exactly as for an id that does not exist: ids cannot be probed
ABSENT = "absent"  # the MATRIX status, and nothing of laboratory A in the answer
NOT_DONE = "not done"  # a form post: back to the page with "Not done: no ...", nothing changed
CROSS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): SAME,
    ("GET", "/readyz"): SAME,
    ("GET", "/login"): SAME,
    ("POST", "/login"): SAME,
    ("GET", "/static/<path:filename>"): SAME,
    ("GET", "/"): SAME,
    ("GET", "/batches"): SAME,  # a shell; its list comes from /api/v1/batches
    ("GET", "/batches/<batch_id>"): HIDDEN,
    ("GET", "/upload"): SAME,
    ("GET", "/single"): SAME,
    ("POST", "/logout"): SAME,
    ("GET", "/specimens"): ABSENT,
    ("GET", "/specimens/<specimen_id>"): HIDDEN,
    ("POST", "/specimens/<specimen_id>/sign"): NOT_DONE,
    ("GET", "/review"): ABSENT,  # its batch filter lists lab A's batch for nobody in B
    ("GET", "/review/sample/<batch_id>"): HIDDEN,
    ("GET", "/admin"): ABSENT,
    ("GET", "/admin/workers"): SAME,  # global admins only (MATRIX)
    ("POST", "/admin/users"): SAME,  # creates the user in the admin's own laboratory
    ("POST", "/admin/users/<int:user_id>"): NOT_DONE,
    ("POST", "/admin/tokens"): NOT_DONE,
    ("POST", "/admin/tokens/<int:token_id>/revoke"): NOT_DONE,
    ("POST", "/admin/laboratories"): SAME,
    ("GET", "/api/v1/openapi.json"): SAME,
    ("GET", "/api/v1/batches"): ABSENT,
    ("POST", "/api/v1/batches"): SAME,  # a new batch, in the uploader's own laboratory
    ("GET", "/api/v1/batches/<batch_id>"): HIDDEN,
    ("POST", "/api/v1/batches/<batch_id>/images"): HIDDEN,
    ("GET", "/api/v1/batches/<batch_id>/results"): HIDDEN,
    ("GET", "/api/v1/images/<int:image_id>"): HIDDEN,
    ("GET", "/api/v1/images/<int:image_id>/thumbnail"): HIDDEN,
    ("GET", "/api/v1/images/<int:image_id>/heatmap"): HIDDEN,
    ("POST", "/api/v1/images/<int:image_id>/heatmap"): HIDDEN,
    ("GET", "/api/v1/batches/<batch_id>/images"): HIDDEN,
    ("GET", "/api/v1/specimens"): ABSENT,
    ("GET", "/api/v1/specimens/<specimen_id>"): HIDDEN,
    ("GET", "/api/v1/specimens/<specimen_id>/fhir"): HIDDEN,
    ("GET", "/api/v1/batches/<batch_id>/fhir"): HIDDEN,
    ("POST", "/api/v1/specimens/<specimen_id>/signoffs"): HIDDEN,
    ("GET", "/api/v1/webhooks"): ABSENT,
    ("POST", "/api/v1/webhooks"): SAME,  # a webhook of the admin's own laboratory
    ("DELETE", "/api/v1/webhooks/<int:webhook_id>"): HIDDEN,
    ("GET", "/api/v1/webhooks/<int:webhook_id>/deliveries"): HIDDEN,
    ("POST", "/api/v1/webhook-deliveries/<delivery_id>/resend"): HIDDEN,
    ("GET", "/api/v1/review/queue"): ABSENT,
    ("GET", "/api/v1/review/items/<int:image_id>"): HIDDEN,
    ("GET", "/api/v1/images/<int:image_id>/reviews"): HIDDEN,
    ("POST", "/api/v1/images/<int:image_id>/reviews"): HIDDEN,
    ("POST", "/api/v1/images/<int:image_id>/reviews/<int:seq>/undo"): HIDDEN,
    ("GET", "/api/v1/batches/<batch_id>/threshold"): HIDDEN,
    ("GET", "/api/v1/batches/<batch_id>/sample"): HIDDEN,
    ("GET", "/api/v1/users"): ABSENT,
    ("POST", "/api/v1/users"): SAME,
    ("PATCH", "/api/v1/users/<int:user_id>"): HIDDEN,
    ("POST", "/api/v1/users/<int:user_id>/tokens"): HIDDEN,
    ("GET", "/api/v1/tokens"): ABSENT,
    ("DELETE", "/api/v1/tokens/<int:token_id>"): HIDDEN,
    ("GET", "/api/v1/audit"): ABSENT,
    ("GET", "/api/v1/laboratories"): ABSENT,
    ("GET", "/api/v1/workers"): SAME,  # global admins only (MATRIX)
    ("GET", "/metrics"): SAME,  # the metrics token or a global admin (MATRIX)
    ("POST", "/api/v1/laboratories"): SAME,
}
# Exports, one request each beside the paged results (same route, other answers).
EXPORTS = ("?format=csv", "?format=json")
LAB_B_ROLES = ("uploader", "reviewer", "admin")  # lab B's users are named "<role>_b"
LAB_A = "default"  # the laboratory of MATRIX's principals and of every object they use
TARGET = "amelia"  # lab A's uploader whose account the admin routes change
LAB_A_HOOK = "https://lis.example/hook-of-lab-a"

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
        ("POST", "/api/v1/laboratories"): {"json": {"name": f"lab{n}"}},
        ("POST", "/api/v1/specimens/<specimen_id>/signoffs"): {
            "json": {"interpretation": "no_leukemia_detected"}
        },
        ("POST", "/specimens/<specimen_id>/sign"): {
            "data": {"interpretation": "no_leukemia_detected"}
        },
        ("POST", "/api/v1/webhooks"): {
            "json": {"url": f"https://lis.example/hook{n}", "events": ["specimen.signed"]}
        },
        ("POST", "/admin/laboratories"): {"data": {"name": f"pagelab{n}"}},
        ("PATCH", "/api/v1/users/<int:user_id>"): {"json": {"role": "reviewer"}},
        ("POST", "/api/v1/users/<int:user_id>/tokens"): {"json": {"label": f"t{n}"}},
        ("POST", "/admin/users"): {
            "data": {"name": f"page{n}", "role": "uploader", "password": PASSWORD}
        },
        ("POST", "/admin/users/<int:user_id>"): {"data": {"role": "uploader"}},
        ("POST", "/admin/tokens"): {"data": {"user_id": "0", "label": f"p{n}"}},
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
        "/api/v1/review/queue": "?state=all",
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
    # Each role signs a specimen of its own (a second signature would be a 409); laboratory
    # B's "<role>_b" is sent laboratory A's specimen of that role.
    page_or_api = "page" if not rule.startswith("/api/") else "api"
    specimen = f"SPEC-{role.removesuffix('_b')}-{page_or_api}"
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


def _add_user(database_url: str, name: str, role: str, lab: str, global_admin: bool = False) -> str:
    """A user of laboratory ``lab`` (created if new); returns a fresh API token for it."""
    with session_factory(engine_for(database_url)).begin() as s:
        found = find_laboratory(s, lab) or create_laboratory(s, lab, None)
        user = find_user(s, name) or create_user(
            s, name, role, PASSWORD, laboratory_id=found.id, global_admin=global_admin
        )
        return create_token(s, user, None, "tests")[1]


@pytest.fixture
def world(db_settings):  # type: ignore[no-untyped-def]
    app = create_app(db_settings)
    url = db_settings.database_url
    tokens = {role: create_account(url, role, role) for role in ROLES[1:4]}
    tokens["global"] = _add_user(url, "global", "admin", LAB_A, global_admin=True)
    for role in LAB_B_ROLES:
        tokens[f"{role}_b"] = _add_user(url, f"{role}_b", role, "lab-b")
    create_account(url, TARGET, "uploader")
    batch_id, image_ids = seed_scored(
        url,
        [0.9, 0.1],
        name="seeded-lab-a",
        storage_dir=db_settings.storage_dir,
        blobs=[smear_like_jpeg(1), smear_like_jpeg(2)],
    )
    give_heatmap(url, db_settings.storage_dir, image_ids[0])
    with session_factory(engine_for(url)).begin() as s:
        target = find_user(s, TARGET)
        assert target is not None
        revocable = {
            rule: create_token(s, target, None, rule)[0]
            for rule in ("/api/v1/tokens/<int:token_id>", "/admin/tokens/<int:token_id>/revoke")
        }
        s.flush()
        ids = Ids(batch_id, image_ids[0], target.id, {r: t.id for r, t in revocable.items()})
    # A cleared image per role and surface, each its own specimen, ready to sign.
    specimens = [f"SPEC-{role}-{where}" for role in ROLES for where in ("page", "api")]
    _, cleared = seed_scored(url, [0.1] * len(specimens))
    with session_factory(engine_for(url)).begin() as s:
        for image_id, specimen in zip(cleared, specimens, strict=True):
            s.execute(update(Image).where(Image.id == image_id).values(specimen_id=specimen))
    ids.signed_specimen = "SPEC-SIGNED"
    scored_specimen(url, ids.signed_specimen, [0.1])
    sign_specimen(url, ids.signed_specimen, "no_leukemia_detected")
    with session_factory(engine_for(url)).begin() as s:
        hook = create_webhook(
            s, LAB_A_HOOK, ["batch.complete"], db_settings.secret_key, None
        ).webhook
        s.flush()
        ids.webhook_id = hook.id
        ids.delivery_id = emit(
            s, WebhookEvent.BATCH_COMPLETE, "authz", {}, laboratory_id=DEFAULT_LAB_ID
        )[0]
    clients = {role: _session(app, role) for role in ROLES}
    clients |= {f"{role}_b": _session(app, f"{role}_b") for role in LAB_B_ROLES}
    return app, clients, tokens, ids


def test_every_route_is_in_the_authorisation_table(world):
    app = world[0]
    routes = _routes(app)
    for table, name in ((MATRIX, "MATRIX"), (CROSS, "CROSS")):
        missing = sorted(routes - table.keys())
        assert not missing, f"routes with no authorisation decision in {name}: {missing}"
        stale = sorted(table.keys() - routes)
        assert not stale, f"{name} names routes the app does not have: {stale}"


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


def _lab_a_markers(ids: Ids) -> tuple[str, ...]:
    """Strings that only laboratory A's objects put into an answer."""
    return (
        ids.batch_id,
        TARGET,
        "seeded-lab-a",
        f'"name":"{LAB_A}"',
        f'"name": "{LAB_A}"',
        "SPEC-",
        LAB_A_HOOK,
    )


def _check_cross(resp, kind: str, expected: int | str, cell: str, ids: Ids, client) -> None:  # type: ignore[no-untyped-def]
    if expected in (401, 403, LOGIN) or kind == SAME:
        _check(resp, expected, cell)
        return
    body = resp.get_data(as_text=True)
    if kind == HIDDEN:
        assert resp.status_code == 404, (cell, resp.status_code, body[:300])
        # Word for word what an id that does not exist gets: nothing tells them apart.
        assert ids.batch_id not in body or "no batch" in body, cell
        return
    if kind == NOT_DONE:
        assert resp.status_code == 302, (cell, resp.status_code)
        with client.session_transaction() as cookie:
            flashed = [m for _, m in cookie.get("_flashes", [])]
        assert any(m.startswith("Not done: no ") for m in flashed), (cell, flashed)
        return
    _check(resp, expected, cell)
    leaked = [m for m in _lab_a_markers(ids) if m in body]
    assert not leaked, (cell, leaked, body[:300])


def _lab_a_unchanged(database_url: str, ids: Ids) -> None:
    """After every cross-laboratory request: A's batch, reviews, account and tokens as seeded."""
    with session_factory(engine_for(database_url))() as s:
        images = s.scalar(
            select(func.count()).select_from(Image).where(Image.batch_id == ids.batch_id)
        )
        reviews = s.scalar(select(func.count()).select_from(Review))
        target = find_user(s, TARGET)
        revoked = s.scalar(
            select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_not(None))
        )
        signoffs = s.scalar(select(func.count()).select_from(SpecimenSignoff))
        hook_active = s.scalar(select(Webhook.active).where(Webhook.url == LAB_A_HOOK))
    assert images == 2, "images were added to laboratory A's batch"
    assert reviews == 0, "a decision was recorded on laboratory A's image"
    assert target is not None and target.role == "uploader" and target.active
    assert revoked == 0, "laboratory A's token was revoked"
    assert signoffs == 1, "a specimen of laboratory A was signed"
    assert hook_active, "laboratory A's webhook was deactivated"


@pytest.mark.parametrize("role", LAB_B_ROLES)
def test_a_user_of_another_laboratory_sees_nothing_of_it_on_any_route(world, db_settings, role):
    app, clients, tokens, ids = world
    column = ROLES.index(role)
    principal = f"{role}_b"
    checked = 0
    for method, rule in sorted(_routes(app), key=lambda r: (r[1], r[0])):
        kind, expected = CROSS[(method, rule)], MATRIX[(method, rule)][column]
        cell = f"{principal} {method} {rule}"
        resp = _request(app, clients, tokens, principal, method, rule, ids)
        _check_cross(resp, kind, expected, cell, ids, clients[principal])
        if rule == "/api/v1/batches/<batch_id>/results":
            for export in EXPORTS:
                headers = {"Authorization": f"Bearer {tokens[principal]}"}
                path = _path(rule, ids) + export
                resp = app.test_client().get(path, headers=headers)
                _check_cross(resp, kind, expected, f"{cell}{export}", ids, None)
        checked += 1
    assert checked == len(CROSS)
    _lab_a_unchanged(db_settings.database_url, ids)
