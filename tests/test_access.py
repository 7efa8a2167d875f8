"""Accounts, roles, API tokens and CSRF: who may do what, and what is recorded about it."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from api import create_app
from db.models import ApiToken, AuditEvent, User
from db.session import engine_for, session_factory
from leukoscreen.cli import main as cli_main
from tests.conftest import PASSWORD, browser_login, create_account, csrf_token, token_client
from tests.reviewdata import seed_scored

PUBLIC = {"/healthz", "/readyz", "/login", "/static/<path:filename>"}


def _sessions(settings):
    return session_factory(engine_for(settings.database_url))


def test_every_endpoint_except_healthz_and_login_needs_credentials(app):
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in PUBLIC:
            continue
        path = re.sub(r"<(?:int:)?(\w+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(path, method=method)
            checked += 1
            if path.startswith("/api/") or path == "/metrics":
                assert resp.status_code == 401, (method, path, resp.status_code)
                assert resp.is_json and resp.json["error"]
            else:
                assert resp.status_code == 302, (method, path, resp.status_code)
                assert resp.headers["Location"].startswith("/login"), (method, path)
    assert checked > 20
    assert client.get("/healthz").status_code == 200


def test_invalid_and_revoked_tokens_are_401(app, db_settings):
    client = token_client(app, db_settings.database_url, "admin1", "admin")
    assert client.get("/api/v1/batches").status_code == 200
    bad = app.test_client().get("/api/v1/batches", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "invalid" in bad.json["error"]
    basic = app.test_client().get("/api/v1/batches", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    tokens = client.get("/api/v1/tokens").json["tokens"]
    assert client.delete(f"/api/v1/tokens/{tokens[0]['id']}").status_code == 200
    assert client.get("/api/v1/batches").status_code == 401


def test_uploader_cannot_record_a_review_and_a_reviewer_can(app, db_settings):
    _, ids = seed_scored(db_settings.database_url, [0.9])
    uploader = token_client(app, db_settings.database_url, "ula", "uploader")
    reviewer = token_client(app, db_settings.database_url, "rita", "reviewer")
    refused = uploader.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed"})
    assert refused.status_code == 403 and "reviewer" in refused.json["error"]
    assert uploader.get("/api/v1/review/queue").status_code == 403
    accepted = reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed"})
    assert accepted.status_code == 201 and accepted.json["reviewer"] == "rita"
    # a reviewer is not an admin
    assert reviewer.get("/api/v1/users").status_code == 403
    assert reviewer.post("/api/v1/users/1/tokens", json={}).status_code == 403


def test_pages_refuse_the_wrong_role_with_403(app, db_settings):
    uploader = browser_login(app, db_settings.database_url, "ula", "uploader")
    assert uploader.get("/batches").status_code == 200
    assert uploader.get("/review").status_code == 403
    assert uploader.get("/admin").status_code == 403


def test_session_posts_need_the_csrf_token(app, db_settings):
    _, ids = seed_scored(db_settings.database_url, [0.9])
    client = browser_login(app, db_settings.database_url, "rita", "reviewer")
    url = f"/api/v1/images/{ids[0]}/reviews"
    missing = client.post(url, json={"decision": "confirmed"})
    assert missing.status_code == 400 and "CSRF" in missing.json["error"]
    wrong = client.post(url, json={"decision": "confirmed"}, headers={"X-CSRFToken": "x"})
    assert wrong.status_code == 400
    token = csrf_token(client.get("/review").get_data(as_text=True))
    ok = client.post(url, json={"decision": "confirmed"}, headers={"X-CSRFToken": token})
    assert ok.status_code == 201


def test_login_form_needs_csrf_and_a_correct_password(app, db_settings):
    create_account(db_settings.database_url, "rita", "reviewer")
    client = app.test_client()
    no_csrf = client.post("/login", data={"username": "rita", "password": PASSWORD})
    assert no_csrf.status_code == 400
    token = csrf_token(client.get("/login").get_data(as_text=True))
    wrong = client.post("/login", data={"username": "rita", "password": "x", "csrf_token": token})
    assert wrong.status_code == 401 and "wrong password" in wrong.get_data(as_text=True)
    with _sessions(db_settings)() as s:
        actions = s.scalars(select(AuditEvent.action)).all()
    assert "user.login_failed" in actions


def test_login_redirects_only_to_paths_on_this_site(app, db_settings):
    create_account(db_settings.database_url, "rita", "reviewer")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    form = {"username": "rita", "password": PASSWORD, "csrf_token": token}
    resp = client.post("/login?next=//evil.example/x", data=form)
    assert resp.headers["Location"] == "/batches"
    client.post("/logout", data={"csrf_token": token})
    resp = client.post("/login?next=/review", data=form)
    assert resp.headers["Location"] == "/review"


def test_passwords_and_tokens_are_stored_hashed(db_settings):
    token = create_account(db_settings.database_url, "rita", "reviewer")
    with _sessions(db_settings)() as s:
        user = s.scalars(select(User)).one()
        stored = s.scalars(select(ApiToken)).one()
    assert PASSWORD not in user.password_hash and user.password_hash.startswith(
        ("scrypt", "pbkdf2")
    )
    assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (stored.token_sha256, stored.prefix)


def test_admin_manages_users_and_tokens_and_every_change_is_audited(app, db_settings):
    admin = token_client(app, db_settings.database_url, "boss", "admin")
    made = admin.post(
        "/api/v1/users", json={"name": "ula", "role": "uploader", "password": "p" * 10}
    )
    assert made.status_code == 201
    assert (
        admin.post(
            "/api/v1/users", json={"name": "ula", "role": "uploader", "password": "p" * 10}
        ).status_code
        == 400
    )
    uid = made.json["id"]
    assert admin.patch(f"/api/v1/users/{uid}", json={"role": "reviewer"}).json["role"] == "reviewer"
    token = admin.post(f"/api/v1/users/{uid}/tokens", json={"label": "scanner"})
    assert token.status_code == 201 and len(token.json["token"]) >= 40
    ula = app.test_client()
    ula.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token.json['token']}"
    assert ula.get("/api/v1/batches").status_code == 200
    assert admin.delete(f"/api/v1/tokens/{token.json['id']}").status_code == 200
    assert ula.get("/api/v1/batches").status_code == 401
    events = admin.get("/api/v1/audit").json["events"]
    actions = [(e["actor"], e["action"], e["target"]) for e in events]
    assert ("boss", "user.create", f"user:{uid}") in actions
    assert ("boss", "user.update", f"user:{uid}") in actions
    assert ("boss", "token.create", f"token:{token.json['id']}") in actions
    assert ("boss", "token.revoke", f"token:{token.json['id']}") in actions
    update = next(e for e in events if e["action"] == "user.update")
    assert update["details"]["role"] == {"from": "uploader", "to": "reviewer"}


def test_deactivating_a_user_ends_their_session(app, db_settings):
    client = browser_login(app, db_settings.database_url, "rita", "reviewer")
    assert client.get("/review").status_code == 200
    admin = token_client(app, db_settings.database_url, "boss", "admin")
    rita = next(u for u in admin.get("/api/v1/users").json["users"] if u["name"] == "rita")
    admin.patch(f"/api/v1/users/{rita['id']}", json={"active": False})
    assert client.get("/review").status_code == 302


def test_uploads_are_audited_with_the_uploader(app, db_settings, make_jpeg):
    import io

    client = token_client(app, db_settings.database_url, "ula", "uploader")
    resp = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(make_jpeg(1)), "a.jpg")]},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    batch = client.get(f"/api/v1/batches/{resp.json['batch_id']}").json
    assert batch["submitted_by"] == "ula"
    with _sessions(db_settings)() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "batch.upload")).one()
    assert event.actor_name == "ula" and event.target == f"batch:{resp.json['batch_id']}"
    assert event.details["accepted"] == 1


def test_cli_adds_users_and_creates_tokens(monkeypatch, settings, capsys):
    from db import migrate

    migrate.upgrade(settings.database_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert cli_main(["user", "add", "rita", "--role", "reviewer", "--password", PASSWORD]) == 0
    assert cli_main(["user", "add", "rita", "--role", "reviewer", "--password", PASSWORD]) == 1
    capsys.readouterr()
    assert cli_main(["token", "create", "rita"]) == 0
    token = capsys.readouterr().out.strip()
    app = create_app(settings)
    resp = app.test_client().get("/api/v1/batches", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert cli_main(["token", "create", "nobody"]) == 1
    with session_factory(engine_for(settings.database_url))() as s:
        actors = {e.action: e.actor_name for e in s.scalars(select(AuditEvent))}
    assert actors["user.create"].startswith("cli:") and actors["token.create"].startswith("cli:")


def test_serve_creates_a_first_admin_only_when_there_is_no_user(settings):
    from dataclasses import replace

    from db import migrate
    from leukoscreen.serve import ensure_first_admin

    migrate.upgrade(settings.database_url)
    password = ensure_first_admin(replace(settings, admin_password="chosen-password"))
    assert password == "chosen-password"
    assert ensure_first_admin(settings) is None
    app = create_app(settings)
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    resp = client.post(
        "/login", data={"username": "admin", "password": password, "csrf_token": token}
    )
    assert resp.status_code == 302
    assert client.get("/admin").status_code == 200


def test_admin_pages_create_users_and_tokens_and_revoke_them(app, db_settings):
    admin = browser_login(app, db_settings.database_url, "boss", "admin")
    token = csrf_token(admin.get("/admin").get_data(as_text=True))
    made = admin.post(
        "/admin/users",
        data={"name": "ula", "role": "uploader", "password": "p" * 10, "csrf_token": token},
    )
    assert made.status_code == 302
    with _sessions(db_settings)() as s:
        ula = s.scalars(select(User).where(User.name == "ula")).one()
    created = admin.post(
        "/admin/tokens", data={"user_id": ula.id, "label": "scanner", "csrf_token": token}
    )
    shown = re.search(
        r'<pre id="new-token" class="token">([^<]+)</pre>', created.get_data(as_text=True)
    )
    assert shown, created.get_data(as_text=True)
    ula_client = app.test_client()
    ula_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {shown.group(1)}"
    assert ula_client.get("/api/v1/batches").status_code == 200
    # shown once: the admin page lists only a prefix
    assert shown.group(1) not in admin.get("/admin").get_data(as_text=True)
    with _sessions(db_settings)() as s:
        token_id = s.scalars(select(ApiToken.id).where(ApiToken.label == "scanner")).one()
    assert (
        admin.post(f"/admin/tokens/{token_id}/revoke", data={"csrf_token": token}).status_code
        == 302
    )
    assert ula_client.get("/api/v1/batches").status_code == 401
    # a form post without the CSRF token changes nothing
    refused = admin.post("/admin/users", data={"name": "x", "role": "admin", "password": "p" * 10})
    assert refused.status_code == 400
    with _sessions(db_settings)() as s:
        assert s.scalar(select(User).where(User.name == "x")) is None
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.actor_name == "boss")).all()
    assert {"user.create", "token.create", "token.revoke"} <= set(actions)


def test_stored_images_need_credentials_and_are_never_publicly_cached(app, db_settings, make_jpeg):
    import io

    client = token_client(app, db_settings.database_url, "ula", "uploader")
    resp = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(make_jpeg(3)), "a.jpg")]},
        content_type="multipart/form-data",
    )
    image_id = resp.json["files"][0]["image_id"]
    assert app.test_client().get(f"/api/v1/images/{image_id}").status_code == 401
    image = client.get(f"/api/v1/images/{image_id}")
    assert image.status_code == 200 and image.data == make_jpeg(3)
    assert "private" in image.headers["Cache-Control"]
    assert "public" not in image.headers["Cache-Control"]


def _user(settings, name: str) -> User:
    with _sessions(settings)() as s:
        return s.scalars(select(User).where(User.name == name)).one()


def _updates_of(settings, name: str) -> list[dict]:
    with _sessions(settings)() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "user.update")).all()
    return [e.details for e in events if e.details.get("name") == name]


@pytest.mark.parametrize("api_body", [{"active": False}, {"role": "reviewer"}])
def test_an_admin_cannot_deactivate_or_demote_their_own_account_in_the_api(
    app, db_settings, api_body
):
    boss = token_client(app, db_settings.database_url, "boss", "admin")
    # Another active admin: the refusal is about changing oneself, not about the last admin.
    create_account(db_settings.database_url, "second", "admin")
    resp = boss.patch(f"/api/v1/users/{_user(db_settings, 'boss').id}", json=api_body)
    assert resp.status_code == 400 and resp.is_json
    assert "your own account" in resp.json["error"]
    after = _user(db_settings, "boss")
    assert after.active and after.role == "admin"
    assert _updates_of(db_settings, "boss") == []
    assert boss.get("/api/v1/users").status_code == 200


@pytest.mark.parametrize("form", [{"active": "0"}, {"role": "reviewer"}])
def test_an_admin_cannot_deactivate_or_demote_their_own_account_on_the_admin_page(
    app, db_settings, form
):
    boss = browser_login(app, db_settings.database_url, "boss", "admin")
    create_account(db_settings.database_url, "second", "admin")
    token = csrf_token(boss.get("/admin").get_data(as_text=True))
    resp = boss.post(
        f"/admin/users/{_user(db_settings, 'boss').id}",
        data={**form, "csrf_token": token},
        headers={"Referer": "http://localhost/admin"},
    )
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin"
    page = boss.get("/admin")
    assert page.status_code == 200
    assert "Not done: you cannot" in page.get_data(as_text=True)
    after = _user(db_settings, "boss")
    assert after.active and after.role == "admin"
    assert _updates_of(db_settings, "boss") == []


def test_an_admin_may_still_change_another_admin_and_their_own_password(app, db_settings):
    boss = token_client(app, db_settings.database_url, "boss", "admin")
    create_account(db_settings.database_url, "second", "admin")
    second = _user(db_settings, "second").id
    assert boss.patch(f"/api/v1/users/{second}", json={"role": "reviewer"}).status_code == 200
    own = boss.patch(f"/api/v1/users/{_user(db_settings, 'boss').id}", json={"password": "n" * 12})
    assert own.status_code == 200 and own.json["role"] == "admin"


@pytest.mark.parametrize("change", [{"active": False}, {"role": "uploader"}])
def test_the_last_active_admin_is_never_deactivated_or_demoted(db_settings, change):
    from db.accounts import update_user
    from db.audit import Operator
    from db.errors import Conflict

    create_account(db_settings.database_url, "boss", "admin")
    create_account(db_settings.database_url, "gone", "admin")
    operator = Operator(name="cli:test")
    with _sessions(db_settings).begin() as s:
        # An inactive admin does not count: it cannot sign in.
        update_user(s, s.scalars(select(User).where(User.name == "gone")).one(), None, active=False)
    with pytest.raises(Conflict, match="last active admin"), _sessions(db_settings).begin() as s:
        update_user(s, s.scalars(select(User).where(User.name == "boss")).one(), operator, **change)
    assert _user(db_settings, "boss").active and _user(db_settings, "boss").role == "admin"
    create_account(db_settings.database_url, "second", "admin")
    with _sessions(db_settings).begin() as s:
        update_user(s, s.scalars(select(User).where(User.name == "boss")).one(), operator, **change)


def test_unknown_records_are_an_error_page_on_pages_and_json_in_the_api(app, db_settings):
    admin = browser_login(app, db_settings.database_url, "boss", "admin")
    page = admin.get("/batches/no-such-batch")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "no batch no-such-batch" in page.get_data(as_text=True)
    api = admin.get("/api/v1/batches/no-such-batch")
    assert api.status_code == 404 and api.json == {"error": "no batch no-such-batch", "status": 404}
    # A form posted from elsewhere (no same-site Referer) goes back to the home page.
    token = csrf_token(admin.get("/admin").get_data(as_text=True))
    posted = admin.post("/admin/tokens/999/revoke", data={"csrf_token": token})
    assert posted.status_code == 302 and posted.headers["Location"] == "/"
    assert "Not done: no token 999" in admin.get("/admin").get_data(as_text=True)
