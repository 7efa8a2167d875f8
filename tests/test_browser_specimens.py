"""A specimen in a real browser: list, specimen page, review its images, sign it.

Against real gunicorn and Celery processes (the fixtures of tests/test_browser.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import create_account, smear_like_jpeg
from tests.test_browser import ARTIFACTS, _login, _watch, browser, web  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]


def _upload_specimen(base: str, token: str, specimen: str, n: int) -> str:
    files = [
        ("images", (f"field{i}.jpg", smear_like_jpeg(100 + i), "image/jpeg")) for i in range(n)
    ]
    manifest = "file,specimen_id,source\n" + "".join(
        f"field{i}.jpg,{specimen},ward 3\n" for i in range(n)
    )
    files.append(("manifest", ("manifest.csv", manifest.encode(), "text/csv")))
    resp = requests.post(
        f"{base}/api/v1/batches",
        files=files,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    batch_id: str = resp.json()["batch_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = requests.get(
            f"{base}/api/v1/batches/{batch_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ).json()
        if status["pending"] == 0:
            return batch_id
        time.sleep(0.5)
    raise AssertionError("the specimen's images were not scored in time")


def test_pathologist_reviews_and_signs_a_specimen(web, browser):  # noqa: F811 - fixtures
    from playwright.sync_api import expect

    base, database_url, _ = web
    token = create_account(database_url, "tech", "uploader")
    _upload_specimen(base, token, "ACC-2026-0001", 3)

    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    _watch(page, problems)
    _login(page, base, "dr.path")

    page.click("nav >> text=Specimens")
    row = page.locator("#specimens tbody tr", has_text="ACC-2026-0001")
    expect(row).to_contain_text("wait for a pathologist")
    page.screenshot(path=str(ARTIFACTS / "20-specimens.png"))
    row.locator("a").click()

    # Every image of this model is flagged (threshold 0): three wait for a decision.
    expect(page.locator("h1")).to_have_text("Specimen ACC-2026-0001")
    expect(page.locator("#specimen-images li")).to_have_count(3)
    expect(page.locator("#specimen-status")).to_contain_text("3 flagged")
    expect(page.locator("#sign-form")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "21-specimen-waiting.png"), full_page=True)

    # Review only this specimen's images, with the keyboard.
    page.click("text=Review the 3 image(s) waiting")
    expect(page.locator("#queue li")).to_have_count(3)
    expect(page.locator("#item-specimen")).to_have_text("ACC-2026-0001")
    expect(page.locator("#filters input[name=specimen]")).to_have_value("ACC-2026-0001")
    page.locator("#stage").focus()
    for i in range(3):
        expect(page.locator("#queue li.current")).to_have_count(1)
        page.keyboard.press("c")
        decided = page.locator("#queue li").nth(i)
        expect(decided).to_have_class(re.compile(r"\bs-confirmed\b"))
        expect(decided).to_have_class(
            re.compile(r"^(?!.*\bcurrent\b)" if i < 2 else r"\bcurrent\b")
        )

    page.goto(f"{base}/specimens/ACC-2026-0001")
    expect(page.locator("#specimen-status")).to_contain_text("ready to sign")
    page.check("input[value=leukemia_suspected]")
    page.fill("#sign-comment", "blasts in every field")
    page.click("#sign-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("signed: leukemia suspected")
    expect(page.locator("#signoffs li")).to_contain_text("Leukemia suspected — signed by dr.path")
    expect(page.locator("#sign-h")).to_have_text("Amend the sign-off")
    page.screenshot(path=str(ARTIFACTS / "22-specimen-signed.png"), full_page=True)

    # The report for the laboratory information system, from the link on the page.
    with page.expect_download() as download_info:
        page.click("#fhir-link")
    report = json.loads(Path(download_info.value.path()).read_text())
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    parsed = DiagnosticReport.model_validate(report)
    assert parsed.status == "final"
    assert parsed.conclusion and "blasts in every field" in parsed.conclusion

    listed = page.request.get(f"{base}/api/v1/specimens/ACC-2026-0001").json()
    assert listed["status"] == "signed"
    assert listed["source"] == "ward 3"
    assert [s["interpretation"] for s in listed["signoffs"]] == ["leukemia_suspected"]
    assert problems == []
