"""The batch page lists every file of its batch in a real headless Chromium: flagged first,
thumbnails, decisions, keyset pages behind "Show more", links to the review; duplicates and
rejections with their reasons stay readable after the upload; /batches can hide one-image
batches (issue 11 items 3 and 9)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db import lifecycle
from db.models import Batch, Image
from db.session import engine_for, session_factory
from tests.conftest import smear_like_jpeg
from tests.reviewdata import seed_scored
from tests.test_browser import ARTIFACTS, _login, _serve, _watch, browser  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """The API alone (no worker: the batches are seeded already scored), on SQLite."""
    yield from _serve(tmp_path, None)


def _add_duplicate_and_rejection(database_url: str, batch_id: str, twin_id: int) -> None:
    """What the intake records for a repeated file and an unreadable one."""
    from datetime import UTC, datetime

    with session_factory(engine_for(database_url)).begin() as s:
        batch = s.get(Batch, batch_id)
        twin = s.get(Image, twin_id)
        assert batch is not None and twin is not None
        now = datetime.now(UTC)
        lifecycle.admit(
            s,
            batch,
            accepted=False,
            now=now,
            duplicate_of=twin,
            sha256=twin.sha256,
            original_name="again.jpg",
            storage_key=twin.storage_key,
            size_bytes=1,
            format=twin.format,
            error=f"same file as {twin.original_name} in this batch",
            reason_code="duplicate",
        )
        lifecycle.admit(
            s,
            batch,
            accepted=False,
            now=now,
            sha256="0" * 64,
            original_name="notes.jpg",
            size_bytes=1,
            error="not an image: the file is not a JPEG, PNG, BMP or TIFF picture",
            reason_code="not_an_image",
        )


def _give_subtype(
    database_url: str, image_ids: list[int], subtype: str, probs: dict[str, float]
) -> None:
    from db.models import Result

    with session_factory(engine_for(database_url)).begin() as s:
        for result in s.scalars(select(Result).where(Result.image_id.in_(image_ids))):
            result.subtype, result.subtype_probs = subtype, probs


def test_the_batch_page_lists_its_files_flagged_first_in_pages(pages, browser):  # noqa: F811
    from playwright.sync_api import expect

    base, database_url, storage = pages
    n = 55
    # Images 50.. are flagged: on the first page only because flagged images come first.
    scores = [0.1 + i * 0.001 for i in range(50)] + [0.9 - i * 0.01 for i in range(n - 50)]
    batch_id, ids = seed_scored(
        database_url,
        scores,
        name="ward 5",
        storage_dir=storage,
        blobs=[smear_like_jpeg(300 + i) for i in range(n)],
    )
    _add_duplicate_and_rejection(database_url, batch_id, ids[52])
    # A generation-2 network's subtype estimates: shown for a flagged image, never for a
    # cleared one, though both carry them.
    probs = {"early_pre_b": 0.07, "pre_b": 0.91, "pro_b": 0.02}
    _give_subtype(database_url, [ids[50], ids[0]], "pre_b", probs)
    seed_scored(database_url, [0.2], name="one from /single")

    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    _watch(page, problems)
    _login(page, base, "dr.path")
    page.goto(f"{base}/batches/{batch_id}")
    rows = page.locator("table.images tbody tr")
    expect(rows).to_have_count(50)
    names = rows.locator("td.filename").all_inner_texts()
    # The five flagged images first, then the duplicate of a flagged one, in upload order.
    assert names[:6] == [f"cell_{i:03d}.jpg" for i in range(50, 55)] + ["again.jpg"]
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("Flagged")
    expect(rows.nth(5).locator("td").nth(2)).to_contain_text("duplicate of cell_052.jpg")
    subtype = rows.nth(0).locator("td").nth(4).locator(".subtype")
    expect(subtype).to_contain_text("Pre-B 0.910")
    expect(subtype.locator(".nowrap")).to_have_attribute("title", re.compile("not a diagnosis"))
    expect(rows.nth(1).locator("td").nth(4)).to_have_text("")  # flagged, no subtype head
    cleared = rows.filter(has=page.locator("td.filename", has_text="cell_000.jpg"))
    expect(cleared.locator("td").nth(2)).to_have_text("Cleared")
    expect(cleared.locator("td").nth(4)).to_have_text("")
    expect(rows.nth(0).locator("td").nth(5)).to_have_text("not reviewed yet")
    expect(rows.nth(0).locator("img.thumb")).to_have_js_property("complete", True)
    assert rows.nth(0).locator("img.thumb").evaluate("img => img.naturalWidth") > 0
    expect(page.locator("#images-shown")).to_have_text("50 shown")
    # The upload's summary stays on the page: counts, and each file with its reason.
    expect(page.locator("#received")).to_contain_text(
        "57 file(s) received: 55 accepted for scoring, 1 rejected, 1 duplicate(s)"
    )
    expect(page.locator("#problems")).to_contain_text("notes.jpg")
    expect(page.locator("#problems")).to_contain_text("not_an_image")
    expect(page.locator("#problems")).to_contain_text("same file as cell_052.jpg")
    page.screenshot(path=str(ARTIFACTS / "11-batch-images.png"), full_page=True)
    for width in (800, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"11-batch-images-{width}.png"))
    page.set_viewport_size({"width": 1366, "height": 900})

    # The next keyset page is appended, nothing repeated; the rejected file comes last.
    page.click("#images-more")
    expect(rows).to_have_count(57)
    expect(page.locator("#images-more")).to_be_hidden()
    all_names = rows.locator("td.filename").all_inner_texts()
    assert len(set(all_names)) == 57 and all_names[-1] == "notes.jpg"

    # Each flagged row links to its review: the batch's queue narrowed to that image.
    rows.nth(0).locator("a", has_text="Review").click()
    expect(page.locator("#queue li")).to_have_count(1)
    expect(page.locator("#item-name")).to_have_text("cell_050.jpg")

    # /batches shows rejected and duplicate counts, and can hide one-image batches.
    page.goto(f"{base}/batches")
    table = page.locator("#batches tbody tr")
    expect(table).to_have_count(2)
    ward = table.filter(has_text="ward 5")
    expect(ward.locator(".n-rejected")).to_have_text("1")
    expect(ward.locator(".n-duplicate")).to_have_text("1")
    page.check("#hide-single")
    expect(table).to_have_count(1)
    page.reload()  # remembered in this browser
    expect(table).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "12-batches-hide-single.png"))
    with session_factory(engine_for(database_url))() as s:
        assert s.scalar(select(Image.state).where(Image.original_name == "again.jpg")) == (
            "duplicate"
        )
    assert problems == []


def test_a_file_sent_twice_shows_on_the_batch_page_and_in_the_export(pages, browser):  # noqa: F811
    from playwright.sync_api import expect

    base, _, _ = pages
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    _watch(page, problems)
    _login(page, base, "dr.path")
    # Seven files, two of them repeats: seven rows, wherever the lab looks.
    blobs = [smear_like_jpeg(600 + i) for i in range(5)]
    files = [
        {"name": f"s{i}.jpg", "mimeType": "image/jpeg", "buffer": b} for i, b in enumerate(blobs)
    ]
    files += [
        {"name": "s0-again.jpg", "mimeType": "image/jpeg", "buffer": blobs[0]},
        {"name": "s3-again.jpg", "mimeType": "image/jpeg", "buffer": blobs[3]},
    ]
    page.goto(f"{base}/upload")
    page.set_input_files("#files", files)
    page.click("#upload button[type=submit]")
    page.wait_for_url(f"{base}/batches/*", timeout=60_000)
    batch_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#received")).to_contain_text(
        "7 file(s) received: 5 accepted for scoring, 0 rejected, 2 duplicate(s)"
    )
    expect(page.locator("#problems tbody tr")).to_have_count(2)
    expect(page.locator("#problems")).to_contain_text("same file as s0.jpg")
    expect(page.locator("table.images tbody tr")).to_have_count(7)
    csv_text = page.request.get(f"{base}/api/v1/batches/{batch_id}/results?format=csv").text()
    assert len(list(csv.DictReader(io.StringIO(csv_text)))) == 7
    assert problems == []


def test_the_same_image_in_two_batches_is_decided_once_in_the_queue(pages, browser):  # noqa: F811
    from playwright.sync_api import expect

    base, database_url, storage = pages
    same = smear_like_jpeg(700)
    monday, _ = seed_scored(database_url, [0.9], name="monday", storage_dir=storage, blobs=[same])
    tuesday, _ = seed_scored(database_url, [0.9], name="tuesday", storage_dir=storage, blobs=[same])
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    _watch(page, problems)
    _login(page, base, "dr.path")
    page.goto(f"{base}/review")
    expect(page.locator("#queue li")).to_have_count(1)  # one content, shown once
    expect(page.locator("#big")).to_have_js_property("complete", True)
    page.locator("#stage").focus()
    page.keyboard.press("c")
    expect(page.locator("#queue li").nth(0)).to_contain_text("confirmed")
    exports = [
        next(
            csv.DictReader(
                io.StringIO(
                    page.request.get(f"{base}/api/v1/batches/{b}/results?format=csv").text()
                )
            )
        )
        for b in (monday, tuesday)
    ]
    for column in ("review_decision", "review_label", "reviewed_by", "reviewed_at"):
        assert exports[0][column] == exports[1][column], column
    assert exports[0]["review_decision"] == "confirmed"
    # Nothing of either batch is left to review.
    page.goto(f"{base}/review?batch={tuesday}")
    expect(page.locator("#queue li")).to_have_count(0)
    assert problems == []
