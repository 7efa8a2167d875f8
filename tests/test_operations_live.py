"""Operations under the real stack: gunicorn with two workers and a Celery worker sharing one
prometheus-client multiprocess folder, as `leukoscreen serve` and compose run them."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from bench.processes import ProcessGroup, free_port, project_env
from db import migrate
from tests.conftest import create_account, smear_like_jpeg
from tests.test_prometheus_metrics import SCRAPER_TOKEN, samples

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _until(what: str, check: Callable[[], bool], svc: ProcessGroup, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout} s:\n{svc.logs()}")


@pytest.fixture
def stack(tmp_path: Path, model_path: Path) -> Iterator[tuple[ProcessGroup, str, str]]:
    database_url = f"sqlite:///{tmp_path / 'var' / 'leukoscreen.db'}"
    env = project_env(
        DATABASE_URL=database_url,
        LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        LEUKOSCREEN_CHUNK_SIZE="8",
        LEUKOSCREEN_BATCH_SIZE="8",
        LEUKOSCREEN_HEARTBEAT_S="1",
        LEUKOSCREEN_WORKER_STALE_S="4",
        LEUKOSCREEN_METRICS_TOKEN=SCRAPER_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        LEUKOSCREEN_LOG_FORMAT="json",
    )
    migrate.upgrade(database_url)
    (tmp_path / "logs").mkdir()
    svc = ProcessGroup(env, tmp_path / "logs")
    try:
        base = svc.start_api(workers=2)
        yield svc, base, create_account(database_url, "lab", "uploader")
    finally:
        svc.stop_all()


def test_metrics_move_as_a_batch_is_scored_and_when_the_worker_is_killed(stack):
    svc, base, token = stack
    auth = {"Authorization": f"Bearer {token}"}

    def scrape() -> dict:
        resp = requests.get(
            f"{base}/metrics", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        return samples(resp.text)

    exporter = free_port()
    worker = svc.start(
        "worker", "--concurrency", "1", "--metrics-port", str(exporter), name="worker"
    )
    batch_id = None
    for part in range(2):  # two requests, answered by either gunicorn worker
        files = [
            ("images", (f"p{part}_{i}.jpg", io.BytesIO(smear_like_jpeg(part * 100 + i))))
            for i in range(10)
        ]
        url = f"{base}/api/v1/batches" + (f"/{batch_id}/images" if batch_id else "")
        sent = requests.post(url, files=files, headers=auth, timeout=60)
        assert sent.status_code == 202, sent.text
        batch_id = sent.json()["batch_id"]

    def scored() -> bool:
        batch = requests.get(f"{base}/api/v1/batches/{batch_id}", headers=auth, timeout=10)
        return batch.json()["pending"] == 0

    _until("scoring the batch", scored, svc)
    got = scrape()
    assert got[("leukoscreen_images", (("state", "scored"),))] == 20
    # Counted in the Celery pool process and in both gunicorn workers, added up here.
    assert got[("leukoscreen_images_scored_total", ())] == 20
    assert got[("leukoscreen_intake_requests_total", (("outcome", "accepted"),))] == 2
    assert got[("leukoscreen_intake_files_total", (("status", "accepted"),))] == 20
    assert got[("leukoscreen_enqueued_images_total", (("queue", "cpu"),))] >= 10  # the added part
    assert got[("leukoscreen_chunk_seconds_count", ())] >= 3  # chunks of 8
    assert got[("leukoscreen_model_seconds_per_image_count", ())] >= 3
    # The same counts from the worker host's own exporter (for hosts that run no API).
    host = samples(requests.get(f"http://127.0.0.1:{exporter}/metrics", timeout=10).text)
    assert host[("leukoscreen_images_scored_total", ())] == 20
    _until(
        "a heartbeat with the scored images",
        lambda: scrape()[("leukoscreen_worker_images_last_minute", ())] == 20,
        svc,
        timeout=30,
    )
    assert scrape()[("leukoscreen_worker_processes", (("queue", "cpu"),))] == 1
    workers = requests.get(f"{base}/api/v1/workers", headers=auth, timeout=10)
    assert workers.status_code == 403  # an uploader: worker status is for admins

    # A paused worker (SIGSTOP: a hung host) stops its heartbeat: a new batch says stalled,
    # and stops saying so once the worker goes on.
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        one = [("images", ("paused.jpg", io.BytesIO(smear_like_jpeg(999))))]
        sent = requests.post(f"{base}/api/v1/batches", files=one, headers=auth, timeout=60)
        waiting = f"{base}/api/v1/batches/{sent.json()['batch_id']}"

        def stalled() -> bool:
            return requests.get(waiting, headers=auth, timeout=10).json()["stalled"]

        _until("the stalled message for a paused worker", stalled, svc, timeout=60)
        message = requests.get(waiting, headers=auth, timeout=10).json()["stall_message"]
        assert "No worker is taking images" in message
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    _until(
        "the paused worker scoring again",
        lambda: requests.get(waiting, headers=auth, timeout=10).json()["pending"] == 0,
        svc,
        timeout=120,
    )
    assert not stalled()

    svc.kill_group(worker)  # kill -9 of the worker and its pool: no clean goodbye
    _until(
        "the killed worker's heartbeat going stale",
        lambda: scrape()[("leukoscreen_worker_processes", (("queue", "cpu"),))] == 0,
        svc,
        timeout=60,
    )
    got = scrape()
    assert got[("leukoscreen_worker_processes_stale", ())] >= 1
    # Counters of the dead processes stay: a kill does not rewrite what was scored.
    assert got[("leukoscreen_images_scored_total", ())] == 21
    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503 and "no live worker on queue cpu" in ready.json()["reasons"]

    # LEUKOSCREEN_LOG_FORMAT=json: the batch followed from the upload into the worker.
    api_lines, worker_lines = (json_lines(svc.log_dir / f"{n}.log") for n in ("api", "worker"))
    uploads = [line for line in api_lines if line.get("batch_id") == batch_id]
    request_ids = {line["request_id"] for line in uploads if line["logger"] == "api.batches"}
    assert len(request_ids) == 2  # one per upload request of this batch
    chunks = [line for line in worker_lines if line.get("batch_id") == batch_id]
    scored_ids = {
        i for line in chunks if line["logger"] == "worker.tasks" for i in line["image_ids"]
    }
    assert len(scored_ids) == 20
    assert {line["request_id"] for line in chunks} == request_ids
    assert {line["level"] for line in api_lines + worker_lines} <= {"INFO", "WARNING", "ERROR"}


# TensorFlow's C++ runtime writes these to the file descriptor itself, before and outside
# Python's logging: the only lines a JSON log may not turn into objects.
NATIVE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )")


def json_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line and not NATIVE.match(line)]
    parsed = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in parsed)
    return parsed
