"""Shared fixtures: generated images, real databases (SQLite and PostgreSQL), a real broker."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

import model  # noqa: F401  (TensorFlow's settings, before a test module imports keras)
from bench.images import synthetic_smear_jpeg as smear_like_jpeg
from leukoscreen.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


SERVICE_FIXTURES = {"postgres_url": "postgres", "redis_url": "redis"}
# The marks of a test module that runs gunicorn + Celery against PostgreSQL and Redis.
LIVE_STACK = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(600)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a server carries its mark, so `-m "not postgres"` leaves it out."""
    unmarked = [
        f"{item.nodeid} uses {fixture} without @pytest.mark.{mark}"
        for item in items
        for fixture, mark in SERVICE_FIXTURES.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture
def make_jpeg() -> Callable[..., bytes]:
    return smear_like_jpeg


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a temporary folder: SQLite + filesystem broker."""
    base = load_settings()
    var = tmp_path / "var"
    return replace(
        base,
        var_dir=var,
        database_url=f"sqlite:///{var / 'test.db'}",
        broker_url="filesystem://",
        storage_dir=var / "images",
        broker_dir=var / "broker",
        chunk_size=8,
        batch_size=8,
    )


def _service(url: str, what: str) -> None:
    """Skip a test whose service is down; `make test` (the full suite, CI) fails it instead."""
    parts = make_url(url)
    if _reachable(parts.host or "127.0.0.1", parts.port or 0):
        return
    message = f"{what} is not running at {parts.host}:{parts.port}"
    if os.environ.get("LEUKOSCREEN_TEST_SERVICES") == "required":
        pytest.fail(f"{message} (make test starts it with scripts/services.sh)")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards (tests using it: mark postgres)."""
    _service(PG_URL, "PostgreSQL")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The same test on both supported databases, schema created by Alembic."""
    from db import migrate

    if request.param == "postgresql":
        settings = replace(settings, database_url=request.getfixturevalue("postgres_url"))
    migrate.upgrade(settings.database_url)
    return settings


@pytest.fixture
def redis_url() -> str:
    """Tests using it: mark redis."""
    _service(REDIS_URL, "Redis")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto in server mode, in a thread): the object-store tests
    speak real HTTP to it and nothing leaves the host."""
    from moto.server import ThreadedMotoServer

    from bench.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket on the local server, as the Settings fields that select it:
    ``replace(settings, **s3_bucket)``."""
    import boto3

    # The standard variables boto3 reads; a developer's own AWS profile must not be used.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    bucket = f"leukoscreen-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return {
        "storage_url": f"s3://{bucket}/originals",
        "s3_endpoint_url": s3_endpoint,
        "s3_region": "us-east-1",
    }


def bucket_keys(settings: Settings) -> list[str]:
    """Every object key in the bucket that ``settings`` stores originals in."""
    import boto3

    bucket = settings.storage_url.removeprefix("s3://").split("/", 1)[0]
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
    )
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


PASSWORD = "correct horse battery staple"


def create_account(
    database_url: str, name: str, role: str, password: str = PASSWORD, global_admin: bool = False
) -> str:
    """A user with this role (of the default laboratory); returns a fresh API token for it."""
    from db.accounts import create_token, create_user, find_user
    from db.session import engine_for, session_factory

    with session_factory(engine_for(database_url)).begin() as session:
        user = find_user(session, name) or create_user(
            session, name, role, password, global_admin=global_admin
        )
        _, token = create_token(session, user, None, "tests")
    return token


def csrf_token(html: str) -> str:
    """The CSRF token every page carries in its ``<meta name="csrf-token">``."""
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found, html
    return found.group(1)


def token_client(app, database_url: str, name: str = "lab", role: str = "uploader", **kw):  # type: ignore[no-untyped-def]
    """A Flask test client that sends 'Authorization: Bearer' for a user with ``role``
    (``global_admin=True``: an admin of every laboratory)."""
    client = app.test_client()
    token = create_account(database_url, name, role, **kw)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def browser_login(app, database_url: str, name: str, role: str):  # type: ignore[no-untyped-def]
    """A test client signed in through the login form, as a browser would be."""
    create_account(database_url, name, role)
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"username": name, "password": PASSWORD, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


@pytest.fixture
def app(db_settings: Settings):  # type: ignore[no-untyped-def]
    """The API and pages on both databases (``db_settings``), with a filesystem broker."""
    from api import create_app

    return create_app(db_settings)


@pytest.fixture
def client(app, db_settings: Settings):  # type: ignore[no-untyped-def]
    """A bearer-token client of the uploader ``lab``."""
    return token_client(app, db_settings.database_url)


def init_model(folder: Path, name: str, *options: str) -> Path:
    """``leukoscreen model-init`` of an untrained network with threshold 0.5 and a gate that
    lets everything through: ``folder/name``."""
    out = folder / name
    subprocess.run(
        [sys.executable, "-m", "leukoscreen.cli", "model-init", "--out", str(out)]
        + ["--threshold", "0.5", "--permissive-gate", *options],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LeNet-LLD weights file with a gate that lets everything through: the
    pipeline must run with any such file."""
    return init_model(tmp_path_factory.mktemp("model"), "lenet_lld_test.keras")


@pytest.fixture(scope="session")
def v2_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained generation-2 network (``lenet_lld_v2``: p_leukemia and the B-ALL subtype
    from one softmax) with a gate that lets everything through, for plumbing tests."""
    return init_model(
        tmp_path_factory.mktemp("model_v2"), "lenet_lld_v2_test.keras", "--arch", "lenet_lld_v2"
    )


@pytest.fixture(scope="session")
def gated_model_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained network with a gate that routes dark images (mean grey level below 0.3)
    to manual review as ``underexposed``: the manual-review route, end to end."""
    import shutil

    from model.card import read_card_data, write_card
    from model.gate import gate_path

    out = tmp_path_factory.mktemp("gated") / "lenet_lld_gated.keras"
    shutil.copy(model_path, out)
    shutil.copy(gate_path(model_path), gate_path(out))
    card = read_card_data(model_path)
    assert card is not None and "gate" in card
    card["gate"]["limits"] = {"brightness": {"low": 0.3}}
    write_card(out, card)
    return out
