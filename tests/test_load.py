"""Load: many laboratories uploading at once, against gunicorn, one Celery worker,
PostgreSQL and Redis. Every request must succeed and every image be scored exactly once.

Intake latency per request is printed (p50/p95), not asserted: it depends on the machine.
Run alone with ``pytest -m load -s``. Sizes can be changed through LEUKOSCREEN_LOAD_* for a
bigger run on a bigger machine.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import create_engine, func, select

from bench.images import synthetic_smear_jpeg
from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from db import migrate
from db.models import Image, Result
from tests.conftest import LIVE_STACK, PASSWORD, create_account, csrf_token

pytestmark = [pytest.mark.load, *LIVE_STACK]

UPLOADERS = int(os.environ.get("LEUKOSCREEN_LOAD_UPLOADERS", "20"))
IMAGES_EACH = int(os.environ.get("LEUKOSCREEN_LOAD_IMAGES_EACH", "100"))
# A scanner host sends what it has captured every few seconds: 10 images per request.
PER_REQUEST = int(os.environ.get("LEUKOSCREEN_LOAD_PER_REQUEST", "10"))
SCORE_TIMEOUT_S = 300


@pytest.fixture
def load_stack(tmp_path, model_path, postgres_url, redis_url):  # type: ignore[no-untyped-def]
    env = project_env(
        DATABASE_URL=postgres_url,
        BROKER_URL=redis_url,
        LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        LEUKOSCREEN_CHUNK_SIZE="64",
        LEUKOSCREEN_BATCH_SIZE="32",
    )
    migrate.upgrade(postgres_url)
    tokens = [create_account(postgres_url, f"lab{i:02d}", "uploader") for i in range(UPLOADERS)]
    logs = tmp_path / "logs"
    logs.mkdir()
    svc = ProcessGroup(env, logs)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    svc.start("api", "--port", str(port), "--workers", "4", name="api")
    svc.start("worker", "--concurrency", "1", name="worker")
    if not wait_healthy(base):
        svc.stop_all()
        pytest.fail("API did not start:\n" + svc.logs())
    try:
        yield svc, base, postgres_url, tokens
    finally:
        svc.stop_all()


def _uploader(base: str, token: str, lab: int) -> tuple[str | None, list[float], list[str]]:
    """One laboratory: a batch created by its first request, the rest added to it."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    batch_id: str | None = None
    latencies: list[float] = []
    errors: list[str] = []
    for start in range(0, IMAGES_EACH, PER_REQUEST):
        seeds = range(start, min(start + PER_REQUEST, IMAGES_EACH))
        files = [
            (
                "images",
                (
                    f"lab{lab}_{s}.jpg",
                    synthetic_smear_jpeg(lab * 100_000 + s, (64, 64)),
                    "image/jpeg",
                ),
            )
            for s in seeds
        ]
        url = f"{base}/api/v1/batches" + (f"/{batch_id}/images" if batch_id else "")
        began = time.perf_counter()
        try:
            resp = session.post(url, files=files, data={"name": f"lab {lab}"}, timeout=120)
        except requests.RequestException as exc:
            errors.append(f"lab {lab} part {start}: {exc}")
            continue
        latencies.append(time.perf_counter() - began)
        body = (
            resp.json()
            if resp.headers.get("Content-Type", "").startswith("application/json")
            else {}
        )
        if resp.status_code != 202 or body.get("accepted") != len(files):
            errors.append(f"lab {lab} part {start}: {resp.status_code} {resp.text[:200]}")
            continue
        batch_id = batch_id or body["batch_id"]
    return batch_id, latencies, errors


def _figures(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        states = dict(conn.execute(select(Image.state, func.count()).group_by(Image.state)).all())
        results = conn.scalar(select(func.count()).select_from(Result)) or 0
        distinct = conn.scalar(select(func.count(func.distinct(Result.image_id)))) or 0
    engine.dispose()
    return {**states, "results": results, "distinct": distinct}


def _percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def test_concurrent_uploaders_get_no_errors_and_every_image_is_scored_once(load_stack):
    svc, base, database_url, tokens = load_stack
    total = UPLOADERS * IMAGES_EACH
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=UPLOADERS) as pool:
        outcomes = list(pool.map(lambda i: _uploader(base, tokens[i], i), range(UPLOADERS)))
    upload_s = time.perf_counter() - began
    errors = [e for _, _, errs in outcomes for e in errs]
    latencies = sorted(t for _, lat, _ in outcomes for t in lat)
    assert not errors, "\n".join(errors[:20]) + "\n" + svc.logs()[-4000:]
    assert len({b for b, _, _ in outcomes}) == UPLOADERS

    deadline = time.monotonic() + SCORE_TIMEOUT_S
    while True:
        figures = _figures(database_url)
        if figures.get("queued", 0) + figures.get("scoring", 0) == 0:
            break
        assert time.monotonic() < deadline, f"not scored in time: {figures}\n{svc.logs()[-4000:]}"
        time.sleep(1)
    done_s = time.perf_counter() - began

    print(
        f"\nload: {UPLOADERS} uploaders x {IMAGES_EACH} images, {PER_REQUEST} per request: "
        f"{len(latencies)} requests in {upload_s:.1f} s; intake latency per request "
        f"p50 {_percentile(latencies, 50) * 1000:.0f} ms, "
        f"p95 {_percentile(latencies, 95) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
        f"all {total} scored after {done_s:.1f} s ({total / done_s:.0f} images/s end to end)"
    )
    assert figures.get("scored") == total
    assert figures.get("failed", 0) == 0 and figures.get("rejected", 0) == 0
    assert figures["results"] == figures["distinct"] == total


def test_login_lockout_holds_across_gunicorn_workers(load_stack):
    _, base, _, _ = load_stack

    def attempt(password: str) -> int:
        # A new connection each time, so gunicorn's four workers share the guesses.
        with requests.Session() as browser:
            page = browser.get(f"{base}/login", timeout=10).text
            csrf = csrf_token(page)
            form = {"username": "lab00", "password": password, "csrf_token": csrf}
            return browser.post(
                f"{base}/login", data=form, allow_redirects=False, timeout=10
            ).status_code

    statuses = [attempt("wrong password") for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    assert attempt(PASSWORD) == 429
