"""What an operator and a technician see in a browser when workers are missing: the batch page
says scoring is stalled (instead of "ETA estimating…" for ever)."""

from __future__ import annotations

import io
from collections.abc import Iterator
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
    create_account(database_url, "boss", "admin")
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
    token = create_account(database_url, "boss", "admin")
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
