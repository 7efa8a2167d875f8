"""The whole service as separate real processes: gunicorn API, Celery worker, broker, database."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select

from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from db import migrate
from db.models import Image, Result
from tests.conftest import REPO, create_account, smear_like_jpeg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(
    params=[
        pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
        "sqlite+filesystem",
    ]
)
def service(request, tmp_path, model_path) -> Iterator[tuple[ProcessGroup, str, str]]:
    env = project_env()
    if request.param == "postgres+redis":
        database_url = request.getfixturevalue("postgres_url")
        env["BROKER_URL"] = request.getfixturevalue("redis_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'var' / 'leukoscreen.db'}"
    env.update(
        DATABASE_URL=database_url,
        LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        LEUKOSCREEN_CHUNK_SIZE="16",
        LEUKOSCREEN_BATCH_SIZE="16",
        LEUKOSCREEN_RECONCILE_EVERY_S="2",
        LEUKOSCREEN_STALE_AFTER_S="4",
    )
    migrate.upgrade(database_url)
    # `submit` reads the token from the environment, as a lab's scanner host would.
    env["LEUKOSCREEN_TOKEN"] = create_account(database_url, "lab", "uploader")
    logs = tmp_path / "logs"
    logs.mkdir()
    svc = ProcessGroup(env, logs)
    port = free_port()
    svc.start("api", "--port", str(port), "--workers", "2", name="api")
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base):
        svc.stop_all()
        pytest.fail("API did not start:\n" + svc.logs())
    try:
        yield svc, base, database_url
    finally:
        svc.stop_all()
        print(svc.logs()[-6000:])


def _auth(svc: ProcessGroup) -> dict[str, str]:
    return {"Authorization": f"Bearer {svc.env['LEUKOSCREEN_TOKEN']}"}


def _write_folder(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"smear_{i:04d}.jpg").write_bytes(smear_like_jpeg(i))
    (folder / "corrupt.jpg").write_bytes(smear_like_jpeg(10_000)[:300])
    (folder / "notes.txt").write_text("not an image")
    (folder / "zz_copy_of_0.jpg").write_bytes(smear_like_jpeg(0))


def _counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        states = dict(conn.execute(select(Image.state, func.count()).group_by(Image.state)).all())
        results = conn.scalar(select(func.count()).select_from(Result))
        distinct = conn.scalar(select(func.count(func.distinct(Result.image_id))))
    engine.dispose()
    return {**states, "results": results, "distinct_results": distinct}


def test_folder_submitted_over_http_is_scored_by_a_real_worker(service, tmp_path):
    svc, base, database_url = service
    svc.start("worker", "--concurrency", "1", name="worker")
    folder = tmp_path / "lab"
    _write_folder(folder, 40)
    out_csv = tmp_path / "results.csv"
    submit = subprocess.run(
        [
            sys.executable,
            "-m",
            "leukoscreen.cli",
            "submit",
            str(folder),
            "--url",
            base,
            "--part-files",
            "15",
            "--csv",
            str(out_csv),
            "--timeout",
            "240",
        ],
        cwd=REPO,
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr + svc.logs()
    assert "40 accepted, 2 rejected, 1 duplicate" in submit.stdout

    rows = list(csv.DictReader(out_csv.open()))
    by_name = {r["file_name"]: r for r in rows}
    # One row per file sent: 40 scored, 2 rejected, and the duplicate, which is not re-scored
    # but shows its twin's result.
    assert len(rows) == 43
    for i in range(40):
        row = by_name[f"smear_{i:04d}.jpg"]
        assert row["state"] == "scored"
        p = float(row["p_leukemia"])
        assert 0.0 <= p <= 1.0
        assert row["flagged"] == ("true" if p >= float(row["threshold"]) else "false")
        assert row["model_version"].startswith("lenet_lld") and len(row["model_sha256"]) == 64
    assert by_name["corrupt.jpg"]["state"] == "rejected" and by_name["corrupt.jpg"]["error"]
    assert by_name["notes.txt"]["state"] == "rejected"
    copy = by_name["zz_copy_of_0.jpg"]
    assert copy["state"] == "duplicate" and copy["reason_code"] == "duplicate"
    assert copy["duplicate_of"] == by_name["smear_0000.jpg"]["image_id"]
    assert copy["p_leukemia"] == by_name["smear_0000.jpg"]["p_leukemia"]
    assert _counts(database_url)["results"] == 40

    batches = requests.get(f"{base}/api/v1/batches", headers=_auth(svc)).json()["batches"]
    batch_id = batches[0]["id"]
    status = requests.get(f"{base}/api/v1/batches/{batch_id}", headers=_auth(svc)).json()
    assert status["state"] == "complete" and status["done"] == status["total"] == 43


def test_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(service, tmp_path):
    svc, base, database_url = service
    worker = svc.start("worker", "--concurrency", "1", name="worker1")
    n = 600
    files = [("images", (f"s{i}.jpg", smear_like_jpeg(i), "image/jpeg")) for i in range(n)]
    resp = requests.post(f"{base}/api/v1/batches", files=files, headers=_auth(svc), timeout=300)
    assert resp.status_code == 202 and resp.json()["accepted"] == n

    deadline = time.monotonic() + 180
    while _counts(database_url).get("scored", 0) < 48:
        assert time.monotonic() < deadline, "worker never started scoring\n" + svc.logs()
        time.sleep(0.1)
    svc.kill_group(worker)
    at_kill = _counts(database_url)
    assert at_kill.get("scored", 0) < n, "batch finished before the kill; raise n"

    # A new worker with the reconciler schedule: the system must recover by itself.
    svc.start("worker", "--concurrency", "1", "--beat", name="worker2")
    deadline = time.monotonic() + 300
    while True:
        counts = _counts(database_url)
        if counts.get("queued", 0) + counts.get("scoring", 0) == 0:
            break
        assert time.monotonic() < deadline, f"not recovered: {counts}\n{svc.logs()}"
        time.sleep(0.5)
    print(f"submitted {n}, scored at kill {at_kill.get('scored', 0)}, final {counts}")
    assert counts.get("scored") == n and counts.get("failed", 0) == 0
    assert counts["results"] == counts["distinct_results"] == n
