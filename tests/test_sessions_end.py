"""Sessions that end: signing out or a password change invalidates every existing cookie."""

from __future__ import annotations

import pytest

from api import create_app
from db import migrate
from tests.conftest import PASSWORD, create_account, csrf_token, token_client

NEW_PASSWORD = "a different long passphrase"


@pytest.fixture
def app(db_settings):
    migrate.upgrade(db_settings.database_url)
    return create_app(db_settings)


def _signed_in(app, name: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"username": name, "password": password, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    assert client.get("/api/v1/batches").status_code == 200
    return client


def _copy(app, client):  # type: ignore[no-untyped-def]
    """Another browser holding the same cookie (a second tab, or a stolen copy)."""
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    return other


def test_sign_out_ends_every_copy_of_the_session(app, db_settings):
    create_account(db_settings.database_url, "ann", "uploader")
    create_account(db_settings.database_url, "bob", "uploader")
    ann = _signed_in(app, "ann")
    bob = _signed_in(app, "bob")
    stolen = _copy(app, ann)
    page = ann.get("/batches").get_data(as_text=True)
    assert ann.post("/logout", data={"csrf_token": csrf_token(page)}).status_code == 302
    assert stolen.get("/api/v1/batches").status_code == 401
    assert ann.get("/api/v1/batches").status_code == 401
    assert bob.get("/api/v1/batches").status_code == 200  # other people stay signed in
    assert _signed_in(app, "ann").get("/api/v1/batches").status_code == 200


def test_password_change_ends_existing_sessions(app, db_settings):
    create_account(db_settings.database_url, "cid", "uploader")
    cid = _signed_in(app, "cid")
    admin = token_client(app, db_settings.database_url, "root", "admin")
    uid = next(u["id"] for u in admin.get("/api/v1/users").json["users"] if u["name"] == "cid")
    assert admin.patch(f"/api/v1/users/{uid}", json={"role": "reviewer"}).status_code == 200
    assert cid.get("/api/v1/batches").status_code == 200  # a role change keeps the session
    assert admin.patch(f"/api/v1/users/{uid}", json={"password": NEW_PASSWORD}).status_code == 200
    assert cid.get("/api/v1/batches").status_code == 401
    assert _signed_in(app, "cid", NEW_PASSWORD).get("/api/v1/batches").status_code == 200
