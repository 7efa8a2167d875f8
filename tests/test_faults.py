"""Fault injection against real processes: nothing lost, nothing duplicated, recovery unaided.

Every case runs a batch through gunicorn, Celery workers, Redis and PostgreSQL, injects one
fault, lets the workers and the reconciler recover by themselves, then checks that every
accepted image has exactly one result. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import create_engine, func, select

from bench.images import synthetic_smear_jpeg
from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from db import migrate
from db.models import Image, Result
from tests.conftest import LIVE_STACK, REDIS_URL, REPO, create_account

pytestmark = [pytest.mark.faults, *LIVE_STACK]

PG_CLUSTER = [
    "pg_ctlcluster",
    "--skip-systemctl-redirect",
    next(iter(sorted(os.listdir("/etc/postgresql"))), "15")
    if os.path.isdir("/etc/postgresql")
    else "15",
    "main",
]


def figures(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        states = dict(conn.execute(select(Image.state, func.count()).group_by(Image.state)).all())
        results = conn.scalar(select(func.count()).select_from(Result)) or 0
        distinct = conn.scalar(select(func.count(func.distinct(Result.image_id)))) or 0
        max_attempts = conn.scalar(select(func.max(Image.attempts))) or 0
    engine.dispose()
    accepted = sum(n for s, n in states.items() if s != "rejected")
    return {
        "accepted": accepted,
        "scored": states.get("scored", 0),
        "failed": states.get("failed", 0),
        "pending": states.get("queued", 0) + states.get("scoring", 0),
        "results": results,
        "duplicates": results - distinct,
        "lost": accepted - distinct - states.get("failed", 0),
        "max_attempts": max_attempts,
    }


def wait_until(predicate, timeout: float, what: str, svc: ProcessGroup | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = svc.logs() if svc else ""
            raise AssertionError(f"timed out waiting for {what}\n{logs[-4000:]}")
        time.sleep(0.2)


HEADERS: dict[str, str] = {}


def upload(base: str, start: int, n: int) -> requests.Response:
    files = [
        ("images", (f"s{i}.jpg", synthetic_smear_jpeg(i), "image/jpeg"))
        for i in range(start, start + n)
    ]
    return requests.post(f"{base}/api/v1/batches", files=files, headers=HEADERS, timeout=300)


def assert_exactly_once(database_url: str, submitted: int, label: str) -> dict[str, int]:
    f = figures(database_url)
    print(
        f"[{label}] submitted {submitted}, accepted {f['accepted']}, scored {f['scored']}, "
        f"failed {f['failed']}, duplicates {f['duplicates']}, lost {f['lost']}"
    )
    assert f["accepted"] == submitted
    assert f["scored"] == submitted and f["failed"] == 0
    assert f["results"] == submitted and f["duplicates"] == 0 and f["lost"] == 0
    return f


@pytest.fixture
def stack(tmp_path, model_path, postgres_url, redis_url):
    """API + environment for workers; tests start the workers they need."""
    env = project_env(
        DATABASE_URL=postgres_url,
        BROKER_URL=redis_url,
        LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        LEUKOSCREEN_CHUNK_SIZE="16",
        LEUKOSCREEN_BATCH_SIZE="16",
        LEUKOSCREEN_RECONCILE_EVERY_S="2",
        LEUKOSCREEN_STALE_AFTER_S="5",
    )
    migrate.upgrade(postgres_url)
    HEADERS["Authorization"] = f"Bearer {create_account(postgres_url, 'lab', 'uploader')}"
    logs = tmp_path / "logs"
    logs.mkdir()
    svc = ProcessGroup(env, logs)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start_api() -> None:
        svc.start("api", "--port", str(port), "--workers", "2", name="api")
        if not wait_healthy(base):
            raise AssertionError("API did not start\n" + svc.logs()[-4000:])

    start_api()
    try:
        yield svc, base, postgres_url, start_api
    finally:
        svc.stop_all()
        _ensure_services()


def _ensure_services() -> None:
    subprocess.run([str(REPO / "scripts" / "services.sh")], check=False, capture_output=True)


def _scored(database_url: str) -> int:
    return figures(database_url)["scored"]


def test_sigkill_of_worker_and_pool_mid_batch(stack):
    svc, base, db, _ = stack
    worker = svc.start("worker", "--concurrency", "2", name="w1")
    assert upload(base, 0, 1000).status_code == 202
    wait_until(lambda: _scored(db) >= 64, 180, "scoring to start", svc)
    svc.kill_group(worker)
    assert _scored(db) < 1000
    svc.start("worker", "--concurrency", "1", "--beat", name="w2")
    wait_until(lambda: figures(db)["pending"] == 0, 300, "recovery", svc)
    assert_exactly_once(db, 1000, "sigkill")


def test_redis_flushall_mid_batch(stack):
    svc, base, db, _ = stack
    svc.start("worker", "--concurrency", "1", "--beat", name="w")
    assert upload(base, 0, 600).status_code == 202
    wait_until(lambda: _scored(db) >= 32, 180, "scoring to start", svc)
    redis.Redis.from_url(REDIS_URL).flushall()
    wait_until(lambda: figures(db)["pending"] == 0, 300, "recovery", svc)
    assert_exactly_once(db, 600, "flushall")


def test_redis_stopped_and_restarted(stack):
    svc, base, db, _ = stack
    svc.start("worker", "--concurrency", "1", "--beat", name="w")
    assert upload(base, 0, 300).status_code == 202
    wait_until(lambda: _scored(db) >= 32, 180, "scoring to start", svc)
    redis.Redis.from_url(REDIS_URL).shutdown(nosave=True)
    try:
        # While the broker is down intake goes on: stored and recorded, queued for later.
        resp = upload(base, 300, 50)
        assert resp.status_code == 202, resp.text
        assert resp.json()["accepted"] == 50 and "broker unavailable" in resp.json()["note"]
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["broker"] == "down"
    finally:
        _ensure_services()
    wait_until(lambda: figures(db)["pending"] == 0, 300, "recovery", svc)
    assert_exactly_once(db, 350, "redis restart")


def test_postgres_restarted_mid_batch(stack):
    svc, base, db, _ = stack
    svc.start("worker", "--concurrency", "1", "--beat", name="w")
    resp = upload(base, 0, 600)
    assert resp.status_code == 202
    batch_id = resp.json()["batch_id"]
    wait_until(lambda: _scored(db) >= 32, 180, "scoring to start", svc)
    subprocess.run([*PG_CLUSTER, "stop", "-m", "fast"], check=True, capture_output=True)
    try:
        during = requests.get(f"{base}/api/v1/batches/{batch_id}", headers=HEADERS, timeout=30)
        assert during.status_code == 503 and "database" in during.json()["error"]
        time.sleep(3)
    finally:
        subprocess.run([*PG_CLUSTER, "start"], check=False, capture_output=True)
        _ensure_services()
    # The API recovers without a restart.
    wait_until(
        lambda: (
            requests.get(
                f"{base}/api/v1/batches/{batch_id}", headers=HEADERS, timeout=30
            ).status_code
            == 200
        ),
        60,
        "API to recover",
        svc,
    )
    wait_until(lambda: figures(db)["pending"] == 0, 300, "recovery", svc)
    assert_exactly_once(db, 600, "postgres restart")


def test_worker_recycling_during_a_batch(stack):
    svc, base, db, _ = stack
    svc.start("worker", "--concurrency", "1", "--max-tasks-per-child", "3", "--beat", name="w")
    assert upload(base, 0, 200).status_code == 202
    wait_until(lambda: figures(db)["pending"] == 0, 300, "batch", svc)
    assert_exactly_once(db, 200, "recycling")
    log = (svc.log_dir / "w.log").read_text()
    assert log.count("loaded model") >= 3  # the pool really was replaced several times


def test_two_worker_hosts_share_the_queue_without_duplicates(stack):
    svc, base, db, _ = stack
    for host in ("host-a", "host-b"):
        svc.env["LEUKOSCREEN_WORKER_HOSTNAME"] = host
        svc.start("worker", "--concurrency", "1", name=host)
    svc.env.pop("LEUKOSCREEN_WORKER_HOSTNAME")
    assert upload(base, 0, 600).status_code == 202
    wait_until(lambda: figures(db)["pending"] == 0, 300, "batch", svc)
    assert_exactly_once(db, 600, "two hosts")
    engine = create_engine(db)
    with engine.connect() as conn:
        by_worker = dict(
            conn.execute(select(Result.worker, func.count()).group_by(Result.worker)).all()
        )
    engine.dispose()
    print(f"[two hosts] results per worker: {by_worker}")
    assert set(by_worker) == {"host-a", "host-b"}


def test_task_redelivered_after_visibility_timeout_adds_no_second_result(stack):
    svc, base, db, _ = stack
    svc.env["LEUKOSCREEN_VISIBILITY_TIMEOUT"] = "2"
    svc.env["LEUKOSCREEN_CHUNK_SIZE"] = "200"
    svc.start("worker", "--concurrency", "2", name="w")
    assert upload(base, 0, 400).status_code == 202
    wait_until(lambda: figures(db)["pending"] == 0, 300, "batch", svc)
    assert_exactly_once(db, 400, "visibility timeout")
    # Proof that a chunk really was delivered again: a run that found nothing left to do.
    log = (svc.log_dir / "w.log").read_text()
    assert re.search(r"'skipped': [1-9]", log), "no task was re-delivered"


def _raw_upload(port: int, body_bytes: int) -> socket.socket:
    """Start a multipart upload announcing more bytes than are sent, and leave it hanging."""
    boundary = "leukoscreenboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {HEADERS['Authorization']}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(head) + body_bytes}\r\n\r\n".encode()
        + head
        + synthetic_smear_jpeg(1) * 20
    )
    return sock


def test_api_killed_or_client_gone_mid_upload_records_nothing(stack):
    svc, base, db, start_api = stack
    port = int(base.rsplit(":", 1)[1])
    storage_tmp = Path(svc.env["LEUKOSCREEN_VAR_DIR"]) / "images" / "tmp"

    sock = _raw_upload(port, 50_000_000)
    time.sleep(1.5)
    sock.close()  # the client disconnects mid-upload
    time.sleep(1.0)

    sock = _raw_upload(port, 50_000_000)
    time.sleep(1.5)
    api = next(p for p in svc.procs if "api" in " ".join(p.args))
    svc.kill_group(api, signal.SIGKILL)  # the API dies mid-upload
    sock.close()
    start_api()  # the next start sweeps temporary files

    f = figures(db)
    leftovers = list(storage_tmp.glob("*")) if storage_tmp.exists() else []
    print(f"[upload interrupted] image rows {f['accepted']}, temporary files left {leftovers}")
    assert f["accepted"] == 0
    assert leftovers == []
    assert upload(base, 0, 3).status_code == 202  # and it still takes uploads
