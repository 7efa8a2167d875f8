"""What an operator and a technician see in a browser when workers are missing: the batch page
says scoring is stalled (instead of "ETA estimating…" for ever), and the admins' worker page
marks a process that stopped reporting."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from bench.processes import ProcessGroup, project_env
from db import migrate
from tests.conftest import create_account, smear_like_jpeg
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _login, _watch

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def api_without_workers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """gunicorn alone on SQLite and the filesystem broker: uploads queue, nobody scores."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium chromium-driver (.ci/run)")
    database_url = f"sqlite:///{tmp_path / 'var' / 'leukoscreen.db'}"
    env = project_env(DATABASE_URL=database_url, LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"))
    migrate.upgrade(database_url)
    create_account(database_url, "boss", "admin", global_admin=True)
    (tmp_path / "logs").mkdir()
    svc = ProcessGroup(env, tmp_path / "logs")
    base = svc.start_api(workers=1)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield base, database_url
    finally:
        svc.stop_all()


@pytest.fixture
def page():  # type: ignore[no-untyped-def]
    """A 1366 px page in Debian's Chromium, failing the test on any script error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": 1366, "height": 900})
        problems: list[str] = []
        _watch(page, problems)
        yield page
        chromium.close()
    assert problems == []


def test_a_batch_with_no_worker_consuming_shows_the_stalled_message(api_without_workers, page):
    from playwright.sync_api import expect

    base, database_url = api_without_workers
    token = create_account(database_url, "boss", "admin", global_admin=True)
    files = [
        ("images", (f"s{i}.jpg", io.BytesIO(smear_like_jpeg(i)), "image/jpeg")) for i in range(4)
    ]
    sent = requests.post(
        f"{base}/api/v1/batches",
        files=files,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert sent.status_code == 202, sent.text
    _login(page, base, "boss")
    page.goto(f"{base}/batches/{sent.json()['batch_id']}")
    warning = page.locator("#stall-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("No worker is taking images from queue cpu")
    expect(page.locator("#progress-text")).to_contain_text("0 of 4 done")
    expect(page.locator("#progress-text")).to_contain_text("stalled")
    expect(page.locator("#progress-text")).not_to_contain_text("estimating")
    page.screenshot(path=str(ARTIFACTS / "ops-batch-stalled.png"), full_page=True)


def test_the_worker_page_lists_processes_and_marks_a_stale_one(api_without_workers, page):
    from playwright.sync_api import expect

    from db.session import engine_for, session_factory
    from db.workers import Beat, record_beat

    base, database_url = api_without_workers
    sessions = session_factory(engine_for(database_url))
    now = datetime.now(UTC)
    record_beat(
        sessions,
        Beat(
            "cpu-11@scan-1",
            "scan-1",
            11,
            ["cpu"],
            2,
            "lenet_lld_bn",
            "ab" * 32,
            now - timedelta(hours=2),
            now,
            128,
        ),
    )
    gone = now - timedelta(minutes=10)
    record_beat(
        sessions,
        Beat("cpu-12@scan-2", "scan-2", 12, ["cpu"], 1, None, None, gone, None, 0),
        now=gone,
    )
    _login(page, base, "boss")
    page.goto(f"{base}/admin")
    page.click("text=Worker status")
    rows = page.locator("#processes tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("scan-1")
    expect(rows.nth(0)).to_contain_text("lenet_lld_bn (abababababab)")
    expect(rows.nth(0)).to_contain_text("128")
    expect(rows.nth(0)).to_contain_text("live")
    expect(rows.nth(1)).to_contain_text("scan-2")
    expect(rows.nth(1)).to_contain_text("stale (no heartbeat)")
    expect(rows.nth(1)).to_have_class("stale")
    queues = page.locator("#queues tbody")
    expect(queues).to_contain_text("reconcile")
    expect(queues).to_contain_text("none — nothing is taken from this queue")
    page.screenshot(path=str(ARTIFACTS / "ops-admin-workers.png"), full_page=True)
