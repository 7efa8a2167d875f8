"""Session cookie flags, security headers on every page, and the production secret-key check."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from api import create_app
from db import migrate
from leukoscreen.config import DEV_SECRET_KEY, InsecureConfiguration, load_settings
from tests.conftest import PASSWORD, REPO, create_account, csrf_token, smear_like_jpeg, token_client

STRONG_KEY = "k" * 16 + "0123456789abcdef-long-enough"


@pytest.fixture
def sqlite_settings(settings):
    migrate.upgrade(settings.database_url)
    return settings


def _login(app, database_url: str, name: str = "ada", role: str = "admin"):  # type: ignore[no-untyped-def]
    # A global admin: every page answers, those spanning every laboratory included.
    create_account(database_url, name, role, global_admin=role == "admin")
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = csrf_token(html)
    resp = client.post("/login", data={"username": name, "password": PASSWORD, "csrf_token": token})
    assert resp.status_code == 302
    return client, resp


def _session_cookie(resp) -> str:  # type: ignore[no-untyped-def]
    cookies = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, resp.headers
    return cookies[0]


def test_session_cookie_is_httponly_samesite_and_not_secure_by_default(sqlite_settings):
    app = create_app(sqlite_settings)
    _, resp = _login(app, sqlite_settings.database_url)
    cookie = _session_cookie(resp)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_when_secure_cookies_is_on(sqlite_settings, monkeypatch):
    monkeypatch.setenv("LEUKOSCREEN_SECURE_COOKIES", "1")
    settings = replace(sqlite_settings, secure_cookies=load_settings().secure_cookies)
    assert settings.secure_cookies
    app = create_app(settings)
    _, resp = _login(app, settings.database_url)
    cookie = _session_cookie(resp)
    assert "; Secure" in cookie and "HttpOnly" in cookie


def _page_paths(app, batch_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    paths = []
    for rule in app.url_map.iter_rules():
        # Machine endpoints, not pages: probes and the Prometheus scrape.
        machine = ("health.healthz", "health.readyz", "metrics.metrics")
        if rule.rule.startswith(("/api/", "/static/")) or rule.endpoint in machine:
            continue
        if "GET" not in rule.methods:
            continue
        rule_path = rule.rule.replace("<specimen_id>", "ACC-H1")
        paths.append(re.sub(r"<(?:\w+:)?\w+>", batch_id, rule_path))
    return paths


def _assert_page_headers(resp, path: str) -> None:  # type: ignore[no-untyped-def]
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip())
    script_sources = directives.get("script-src", directives.get("default-src", ""))
    assert script_sources, (path, csp)
    assert "'unsafe-inline'" not in script_sources and "'unsafe-eval'" not in script_sources
    assert "'unsafe-inline'" not in csp, (path, csp)
    assert directives.get("frame-ancestors") == "'none'", (path, csp)
    assert resp.headers.get("X-Frame-Options") == "DENY", path
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
    assert resp.headers.get("Referrer-Policy") == "same-origin", path


def test_every_page_carries_csp_nosniff_no_framing_and_referrer_policy(sqlite_settings):
    app = create_app(sqlite_settings)
    uploader = token_client(app, sqlite_settings.database_url, "lab", "uploader")
    batch_id = uploader.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(smear_like_jpeg(1)), "a.jpg")], "specimen_id": "ACC-H1"},
    ).json["batch_id"]
    signed_in, _ = _login(app, sqlite_settings.database_url)
    anonymous = app.test_client()
    paths = _page_paths(app, batch_id)
    assert {"/login", "/batches", "/admin", "/review", f"/batches/{batch_id}"} <= set(paths)
    for path in paths:
        resp = signed_in.get(path)
        assert resp.status_code in (200, 302), (path, resp.status_code)
        _assert_page_headers(resp, path)
        # The login redirect and the login page an anonymous visitor sees are pages too.
        _assert_page_headers(anonymous.get(path), path)


def test_production_refuses_the_default_an_empty_or_a_short_secret_key(settings):
    for key in (DEV_SECRET_KEY, "", "   ", "x" * 31):
        with pytest.raises(InsecureConfiguration, match="LEUKOSCREEN_SECRET_KEY"):
            create_app(replace(settings, env="production", secret_key=key))


def test_production_starts_with_a_long_secret_key_and_only_tests_with_the_published_one(settings):
    migrate.upgrade(settings.database_url)
    app = create_app(replace(settings, env="production", secret_key=STRONG_KEY))
    assert app.config["SECRET_KEY"] == STRONG_KEY
    assert create_app(replace(settings, env="test", secret_key=DEV_SECRET_KEY)).config[
        "SECRET_KEY"
    ] == (DEV_SECRET_KEY)
    for env in ("development", "production"):
        with pytest.raises(InsecureConfiguration, match="development key published"):
            create_app(replace(settings, env=env, secret_key=DEV_SECRET_KEY))
    with pytest.raises(InsecureConfiguration, match="LEUKOSCREEN_ENV"):
        create_app(replace(settings, env="prod"))


def test_environment_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEUKOSCREEN_ENV", "Production")
    monkeypatch.setenv("LEUKOSCREEN_SECRET_KEY", "")
    loaded = load_settings()
    assert loaded.env == "production" and loaded.secret_key == ""
    monkeypatch.delenv("LEUKOSCREEN_ENV")
    assert load_settings().env == "development"


@pytest.mark.parametrize("command", ["api", "serve"])
def test_api_and_serve_commands_refuse_to_start_in_production_with_a_weak_key(command, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "LEUKOSCREEN_ENV": "production",
        "LEUKOSCREEN_SECRET_KEY": "short",
        "LEUKOSCREEN_VAR_DIR": str(tmp_path / "var"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "leukoscreen.cli", command, "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "LEUKOSCREEN_SECRET_KEY" in done.stderr


def test_gunicorn_app_module_refuses_a_weak_key_in_production(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import api.wsgi"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "LEUKOSCREEN_ENV": "production",
            "LEUKOSCREEN_VAR_DIR": str(tmp_path / "var"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "InsecureConfiguration" in done.stderr and "at least 32 characters" in done.stderr
