"""No known keys: the published development key signs nothing outside tests.

With no LEUKOSCREEN_SECRET_KEY the API generates a random key on first start and keeps it in
the var folder, readable by its owner only; a cookie signed with the published key is refused.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import replace

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from api import create_app
from db import migrate
from leukoscreen.config import (
    DEV_SECRET_KEY,
    MIN_SECRET_KEY_CHARS,
    SECRET_KEY_FILE,
    InsecureConfiguration,
)
from tests.conftest import PASSWORD, REPO, create_account, csrf_token


@pytest.fixture
def unkeyed(settings):
    """Development settings as `make run` has them: no secret key configured."""
    migrate.upgrade(settings.database_url)
    return replace(settings, env="development", secret_key="")


def _signed(payload: dict, key: str) -> str:
    signer = Flask("forger")
    signer.secret_key = key
    serializer = SecureCookieSessionInterface().get_signing_serializer(signer)
    assert serializer is not None
    return serializer.dumps(payload)


def _admin_session(app, database_url: str) -> dict:
    """Sign in as an admin and return the session the server put in its cookie."""
    create_account(database_url, "root", "admin")
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    resp = client.post(
        "/login", data={"username": "root", "password": PASSWORD, "csrf_token": token}
    )
    assert resp.status_code == 302
    cookie = client.get_cookie("session")
    assert cookie is not None
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    return dict(serializer.loads(cookie.value))


def test_a_key_is_generated_once_in_the_var_folder_owner_only(unkeyed):
    first = create_app(unkeyed)
    key_file = unkeyed.var_dir / SECRET_KEY_FILE
    key = first.config["SECRET_KEY"]
    assert key != DEV_SECRET_KEY and len(key) >= MIN_SECRET_KEY_CHARS
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A restart (or a second gunicorn worker) signs with the same key.
    assert create_app(unkeyed).config["SECRET_KEY"] == key
    assert not [p for p in unkeyed.var_dir.iterdir() if p.name.startswith(".secret_key-")]


def test_a_key_file_others_can_read_is_refused(unkeyed):
    create_app(unkeyed)
    os.chmod(unkeyed.var_dir / SECRET_KEY_FILE, 0o644)
    with pytest.raises(InsecureConfiguration, match="owner-only"):
        create_app(unkeyed)


def test_a_cookie_signed_with_the_published_key_is_refused(unkeyed):
    app = create_app(unkeyed)
    session = _admin_session(app, unkeyed.database_url)
    assert session["_user_id"]

    genuine = app.test_client()
    genuine.set_cookie("session", _signed(session, app.config["SECRET_KEY"]))
    assert genuine.get("/api/v1/users").status_code == 200  # the same payload, the real key

    for payload in (session, {"_user_id": session["_user_id"], "_fresh": True}):
        forged = app.test_client()
        forged.set_cookie("session", _signed(payload, DEV_SECRET_KEY))
        assert forged.get("/api/v1/users").status_code == 401
        assert forged.get("/api/v1/audit").status_code == 401


@pytest.mark.parametrize("env", ["development", "production"])
def test_the_api_command_refuses_the_published_key_outside_tests(env, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "leukoscreen.cli", "api", "--port", "0"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "LEUKOSCREEN_ENV": env,
            "LEUKOSCREEN_SECRET_KEY": DEV_SECRET_KEY,
            "LEUKOSCREEN_VAR_DIR": str(tmp_path / "var"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "development key" in done.stderr
