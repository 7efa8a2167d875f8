"""The admin page's webhook section in headless Chromium: add, secret once, log, re-send."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bench.processes import ProcessGroup, free_port, project_env, wait_healthy
from db import migrate
from db.lifecycle import emit
from db.models import Webhook, WebhookEvent
from db.session import engine_for, session_factory
from tests.conftest import create_account
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _login, _watch

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(300)]


def test_an_admin_adds_a_webhook_sees_its_secret_once_and_resends_a_delivery(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    database_url = f"sqlite:///{tmp_path / 'var' / 'leukoscreen.db'}"
    env = project_env(DATABASE_URL=database_url, LEUKOSCREEN_VAR_DIR=str(tmp_path / "var"))
    migrate.upgrade(database_url)
    create_account(database_url, "boss", "admin")
    (tmp_path / "logs").mkdir()
    svc = ProcessGroup(env, tmp_path / "logs")
    port = free_port()
    svc.start("api", "--port", str(port), "--workers", "1", name="api")
    base = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    try:
        assert wait_healthy(base), svc.logs()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            _watch(page, problems)
            _login(page, base, "boss")
            page.goto(f"{base}/admin")
            page.fill("#webhook-form input[name=url]", "https://lis.example.org/<b>hook</b>")
            page.uncheck("#webhook-form input[value='specimen.signed']")
            page.click("#webhook-form button[type=submit]")
            expect(page.locator("#webhook-secret code")).to_contain_text("whsec_")
            expect(page.locator("#webhook-list")).to_contain_text("batch.complete")
            expect(page.locator("#webhook-list")).to_contain_text("<b>hook</b>")

            sessions = session_factory(engine_for(database_url))
            with sessions.begin() as s:
                assert s.scalar(select(Webhook.url)) == "https://lis.example.org/<b>hook</b>"
                emit(s, WebhookEvent.BATCH_COMPLETE, "b-1/4", {"batch_id": "b-1"})
            page.reload()
            expect(page.locator("#webhook-secret")).to_be_hidden()
            expect(page.locator("#delivery-log")).to_contain_text("b-1/4")
            page.click("#delivery-log button:has-text('Re-send')")
            expect(page.locator("#delivery-log")).to_contain_text("pending")
            expect(page.locator("#webhook-error")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "09-admin-webhooks.png"), full_page=True)
            page.click("#webhook-list button:has-text('Deactivate')")
            expect(page.locator("#webhook-list td").nth(2)).to_have_text("no")
            browser.close()
    finally:
        svc.stop_all()
    assert problems == []
