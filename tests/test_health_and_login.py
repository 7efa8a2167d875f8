"""/healthz checks storage and tells anonymous callers nothing internal; sign-in timing does
not reveal which user names exist."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

import db.accounts
from api import create_app
from db import migrate
from leukoscreen import storage
from tests.conftest import PASSWORD, create_account, csrf_token

INTERNALS = ("127.0.0.1", ":1", "psycopg", "Error", "redis://", "refused", "Errno")


@pytest.fixture
def migrated(settings):
    migrate.upgrade(settings.database_url)
    return settings


def test_503_body_names_what_is_down_and_nothing_internal(migrated):
    down = replace(
        migrated,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
        broker_url="redis://127.0.0.1:1/0",
    )
    resp = create_app(down).test_client().get("/healthz")
    assert resp.status_code == 503
    assert resp.json == {
        "status": "unavailable",
        "database": "down",
        "broker": "down",
        "storage": "ok",
    }
    text = resp.get_data(as_text=True)
    assert not [word for word in INTERNALS if word in text], text


def test_storage_that_cannot_be_written_is_down(migrated, tmp_path):
    not_a_folder = tmp_path / "images"
    not_a_folder.write_text("a file where the image folder should be")
    resp = create_app(replace(migrated, storage_dir=not_a_folder)).test_client().get("/healthz")
    assert resp.status_code == 503 and resp.json["storage"] == "down"
    assert resp.json["database"] == resp.json["broker"] == "ok"


def test_full_storage_is_down(migrated, monkeypatch):
    app = create_app(migrated)
    assert app.test_client().get("/healthz").status_code == 200
    monkeypatch.setattr(
        storage.shutil, "disk_usage", lambda path: storage.shutil._ntuple_diskusage(1, 1, 0)
    )
    resp = app.test_client().get("/healthz")
    assert resp.status_code == 503 and resp.json["storage"] == "down"


def _sign_in(client, name: str, password: str) -> float:  # type: ignore[no-untyped-def]
    token = csrf_token(client.get("/login").get_data(as_text=True))
    started = time.perf_counter()
    client.post("/login", data={"username": name, "password": password, "csrf_token": token})
    return time.perf_counter() - started


def test_unknown_users_cost_a_password_hash_like_real_ones(migrated, monkeypatch):
    create_account(migrated.database_url, "real", "uploader")
    app = create_app(replace(migrated, login_max_failures=1000))
    client = app.test_client()
    _sign_in(client, "warm-up", "x")
    hashed: list[str] = []
    real_check = db.accounts.check_password_hash

    def counting(stored: str, password: str) -> bool:
        hashed.append(password)
        return real_check(stored, password)

    monkeypatch.setattr(db.accounts, "check_password_hash", counting)
    times = {"real": [], "unknown": []}  # type: dict[str, list[float]]
    for _ in range(3):
        times["real"].append(_sign_in(client, "real", "wrong " + PASSWORD))
        times["unknown"].append(_sign_in(client, "nobody", "wrong " + PASSWORD))
    assert len(hashed) == 6  # one hash per attempt, whether the name exists or not
    real, unknown = min(times["real"]), min(times["unknown"])
    print(f"\nwrong password: real user {real * 1000:.0f} ms, unknown user {unknown * 1000:.0f} ms")
    assert unknown > real / 3
