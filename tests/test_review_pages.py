"""The review and upload pages as pathologists and technicians use them, in headless Chromium.

Issue 11: decisions only from deliberate key presses (a held key decides once, undo appends a
withdrawn row), plain messages that keep a typed comment, a layout from 800 to 2560 px, QC
colours and false negatives, /single in plain numbers, the upload page's guards, and axe-core
(WCAG 2.1 AA) on every page, with screenshots at 800, 1366 and 1920 px in test-artifacts/.

One API process (no worker: scored images are written into the database) serves the module.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.processes import ProcessGroup, free_port, project_env
from db import migrate
from tests.conftest import PASSWORD, create_account, smear_like_jpeg
from tests.reviewdata import give_heatmap, seed_scored
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _login, _watch, running

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]

WIDTHS = (800, 1366, 1920)
# What axe-core checks: WCAG 2.0 and 2.1, levels A and AA, and its best practices (content
# in landmarks, no empty table headers, one main landmark, a level-one heading).
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@dataclass
class Site:
    base: str
    database_url: str
    storage: Path
    tokens: dict[str, str]  # user name -> API token

    def seed(self, scores: list[float], name: str, seed: int) -> tuple[str, list[int]]:
        """A scored batch whose originals are stored, so the pages show them."""
        return seed_scored(
            self.database_url,
            scores,
            name=name,
            file_names=[f"{name.split()[0]}_{i:02d}.jpg" for i in range(len(scores))],
            storage_dir=self.storage,
            blobs=[smear_like_jpeg(seed + i) for i in range(len(scores))],
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium chromium-driver (.ci/run)")
    tmp = tmp_path_factory.mktemp("review-pages")
    database_url = f"sqlite:///{tmp / 'var' / 'leukoscreen.db'}"
    (tmp / "var").mkdir()
    migrate.upgrade(database_url)
    tokens = {
        name: create_account(database_url, name, role)
        for name, role in [
            ("dr.path", "reviewer"),
            ("dr.two", "reviewer"),
            ("boss", "admin"),
            ("tech", "uploader"),
        ]
    }
    env = project_env(DATABASE_URL=database_url, LEUKOSCREEN_VAR_DIR=str(tmp / "var"))
    (tmp / "logs").mkdir()
    svc = ProcessGroup(env, tmp / "logs")
    port = free_port()
    svc.start("api", "--port", str(port), "--workers", "1", "--threads", "8", name="api")
    with running(svc, port) as base:
        yield Site(base, database_url, tmp / "var" / "images", tokens)


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser):  # type: ignore[no-untyped-def]
    """New pages in contexts of their own (each its own cookies); closed after the test."""
    contexts = []

    def new(width: int = 1440, height: int = 900):  # type: ignore[no-untyped-def]
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        return context.new_page()

    yield new
    for context in contexts:
        context.close()


def _signed_in(pages, site: Site, name: str, problems: list[str], width: int = 1440):  # type: ignore[no-untyped-def]
    page = pages(width)
    _watch(page, problems)
    _login(page, site.base, name)
    return page


def _api(page, site: Site, path: str, user: str = "dr.path") -> Any:  # type: ignore[no-untyped-def]
    response = page.request.get(
        f"{site.base}{path}", headers={"Authorization": f"Bearer {site.tokens[user]}"}
    )
    assert response.ok, response.text()
    return response.json()


def _history(page, site: Site, image_id: int) -> list[tuple[str, str | None, str]]:  # type: ignore[no-untyped-def]
    rows = _api(page, site, f"/api/v1/images/{image_id}/reviews")["reviews"]
    return [(r["decision"], r["previous_decision"], r["reviewer"]) for r in rows]


def _expected_console_errors(problems: list[str]) -> list[str]:
    """Problems other than the refusals a test provokes on purpose (Chromium logs them)."""
    return [p for p in problems if not re.search(r"status of (401|404|409)", p)]


# ---- 1. deliberate decisions ----------------------------------------------------------------


def test_a_held_key_makes_one_decision_and_undo_appends_a_withdrawn_row(site, pages):
    from playwright.sync_api import expect

    batch_id, ids = site.seed([0.99, 0.97, 0.95, 0.93, 0.91, 0.89], "held key", 1000)
    problems: list[str] = []
    page = _signed_in(pages, site, "dr.path", problems)
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#item-name")).to_have_text("held_00.jpg")
    page.locator("#stage").focus()
    page.keyboard.press("m")
    page.keyboard.type("blasts?")
    page.keyboard.press("Escape")
    # Holding C for a second: the first keydown, then auto-repeats every 50 ms (Playwright
    # marks a keydown of a key already down as a repeat), as a keyboard sends them.
    for _ in range(20):
        page.keyboard.down("c")
        page.wait_for_timeout(50)
    page.keyboard.up("c")
    expect(page.locator("#decide-status")).to_contain_text("saved: confirmed")
    expect(page.locator("#item-name")).to_have_text("held_01.jpg")
    page.wait_for_timeout(500)  # any further (wrong) decision would have been sent by now
    decided = _api(page, site, f"/api/v1/review/queue?batch={batch_id}&state=confirmed")
    assert [i["image_id"] for i in decided["items"]] == [ids[0]]
    assert _api(page, site, f"/api/v1/review/queue?batch={batch_id}")["items"].__len__() == 5

    # Undo (U): back to that image, its comment back in the box, the trail append-only.
    undo = page.locator("#undo")
    expect(undo).to_be_visible()
    page.keyboard.press("u")
    expect(page.locator("#decide-status")).to_contain_text("Undone: the confirmed decision")
    expect(page.locator("#item-name")).to_have_text("held_00.jpg")
    expect(page.locator("#item-state")).to_have_text("unreviewed")
    expect(page.locator("#comment")).to_have_value("blasts?")
    expect(page.locator("#history li")).to_have_count(2)
    expect(page.locator("#history li").nth(1)).to_contain_text("withdrawn by dr.path")
    expect(undo).to_be_hidden()
    assert _history(page, site, ids[0]) == [
        ("confirmed", None, "dr.path"),
        ("withdrawn", "confirmed", "dr.path"),
    ]
    rows = _api(page, site, f"/api/v1/batches/{batch_id}/results?format=json")["results"]
    assert rows[0]["review_decision"] is None  # no current decision: it was taken back

    # Deciding again extends the same history, with the kept comment.
    page.locator("#stage").focus()
    page.keyboard.press("o")
    expect(page.locator("#item-name")).to_have_text("held_01.jpg")
    history = _api(page, site, f"/api/v1/images/{ids[0]}/reviews")["reviews"]
    assert [(h["seq"], h["decision"], h["comment"]) for h in history] == [
        (1, "confirmed", "blasts?"),
        (2, "withdrawn", ""),
        (3, "overturned", "blasts?"),
    ]
    assert problems == []


# ---- 5. plain messages that keep the comment ---------------------------------------------------


def test_a_conflict_and_an_ended_session_keep_the_comment_and_offer_the_way_out(site, pages):
    from playwright.sync_api import expect

    batch_id, ids = site.seed([0.9, 0.8, 0.7], "conflict", 1100)
    problems: list[str] = []
    page = _signed_in(pages, site, "dr.path", problems)
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#item-name")).to_have_text("conflict_00.jpg")

    # Someone else decides the same image meanwhile.
    other = page.request.post(
        f"{site.base}/api/v1/images/{ids[0]}/reviews",
        headers={"Authorization": f"Bearer {site.tokens['dr.two']}"},
        data={"decision": "overturned"},
    )
    assert other.status == 201
    page.locator("#comment").fill("reactive lymphocytes")
    page.locator("#btn-confirm").click()
    problem = page.locator("#decide-problem")
    expect(problem).to_contain_text(
        "dr.two recorded “overturned · no leukemia” for this image while you were looking at it"
    )
    expect(problem).not_to_contain_text("Bearer")
    expect(page.locator("#comment")).to_have_value("reactive lymphocytes")
    page.screenshot(path=str(ARTIFACTS / "review-conflict.png"))
    page.click("#reload-item")
    expect(page.locator("#item-state")).to_have_text("overturned · no leukemia by dr.two")
    expect(page.locator("#comment")).to_have_value("reactive lymphocytes")
    page.locator("#btn-confirm").click()
    expect(page.locator("#item-name")).to_have_text("conflict_01.jpg")
    assert _history(page, site, ids[0]) == [
        ("overturned", None, "dr.two"),
        ("confirmed", "overturned", "dr.path"),
    ]

    # A comment typed on the next image is not dropped by J: a warning first, then it moves,
    # and K brings the image back with the comment.
    page.locator("#comment").fill("look again at the nucleus")
    page.locator("#stage").focus()
    page.keyboard.press("j")
    expect(problem).to_contain_text("Your comment on this image is not saved")
    expect(page.locator("#item-name")).to_have_text("conflict_01.jpg")
    page.keyboard.press("j")
    expect(page.locator("#item-name")).to_have_text("conflict_02.jpg")
    expect(page.locator("#comment")).to_have_value("")
    page.keyboard.press("k")
    expect(page.locator("#item-name")).to_have_text("conflict_01.jpg")
    expect(page.locator("#comment")).to_have_value("look again at the nucleus")
    expect(page.locator("#comment-note")).to_contain_text("not saved yet")
    # Reloading the page loses neither the place nor the comment.
    page.reload()
    expect(page.locator("#item-name")).to_have_text("conflict_01.jpg")
    expect(page.locator("#comment")).to_have_value("look again at the nucleus")

    # The session ends (signed out in another browser): sign in and come back, comment kept.
    elsewhere = _signed_in(pages, site, "dr.path", problems)
    elsewhere.click("text=Sign out")
    page.locator("#btn-overturn").click()
    expect(problem).to_contain_text("you are no longer signed in")
    expect(page.locator("#comment")).to_have_value("look again at the nucleus")
    page.screenshot(path=str(ARTIFACTS / "review-session-ended.png"))
    page.click("#sign-in-again")
    page.fill("input[name=username]", "dr.path")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/review\?batch="))
    expect(page.locator("#item-name")).to_have_text("conflict_01.jpg")
    expect(page.locator("#comment")).to_have_value("look again at the nucleus")
    page.locator("#btn-overturn").click()
    expect(page.locator("#decide-status")).to_contain_text("saved: overturned")
    history = _api(page, site, f"/api/v1/images/{ids[1]}/reviews")["reviews"]
    assert [(h["decision"], h["comment"]) for h in history] == [
        ("overturned", "look again at the nucleus")
    ]
    assert _expected_console_errors(problems) == []


# ---- 6. layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [800, 1100, 1366, 1920, 2560])
def test_the_review_page_shows_the_image_first_and_j_keeps_it_in_view(site, pages, width):
    from playwright.sync_api import expect

    batch_id, _ = site.seed([0.99 - i / 100 for i in range(30)], f"layout{width} w", 1200)
    page = _signed_in(pages, site, "dr.path", [], width)
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#big")).to_have_js_property("complete", True)
    # The decision panel is drawn with the item, which may come after the image on a busy
    # machine: measure once it is there.
    expect(page.locator("#btn-confirm")).to_be_visible()
    stage = page.locator("#stage").bounding_box()
    queue = page.locator("#queue").bounding_box()
    confirm = page.locator("#btn-confirm").bounding_box()
    assert stage and queue and confirm
    # The image is near the top and large, and the decision buttons are on the first screen.
    assert stage["y"] < 150, stage
    assert stage["width"] >= min(0.45 * width, 1400) and stage["height"] >= 400, stage
    assert confirm["y"] + confirm["height"] <= 900, confirm
    if width < 1100:
        assert queue["y"] > stage["y"] + stage["height"] - 1, (queue, stage)
    # J through the queue: the page itself never scrolls; the list follows the current item.
    page.locator("#stage").focus()
    for i in range(1, 25):
        page.keyboard.press("j")
        expect(page.locator("#position")).to_contain_text(f"image {i + 1} of 30")
    assert page.evaluate("window.scrollY") == 0
    current = page.locator("#queue li.current").bounding_box()
    listed = page.locator("#queue").bounding_box()
    assert current and listed
    assert listed["y"] - 1 <= current["y"] <= listed["y"] + listed["height"] - current["height"] + 1
    page.screenshot(path=str(ARTIFACTS / f"review-layout-{width}.png"))


# ---- 7. QC colours and false negatives --------------------------------------------------------


def test_qc_colours_match_the_buttons_and_a_false_negative_is_counted_filtered_and_exported(
    site, pages
):
    from playwright.sync_api import expect

    batch_id, ids = site.seed([0.95, 0.2, 0.1, 0.3], "qc batch", 1300)
    problems: list[str] = []
    page = _signed_in(pages, site, "dr.path", problems)
    page.goto(f"{site.base}/review/sample/{batch_id}")
    queue = page.locator("#queue li")
    expect(queue).to_have_count(3)
    colour = "el => getComputedStyle(el).color"
    red = page.locator("#btn-overturn").evaluate(colour)  # cleared image: overturn = positive
    green = page.locator("#btn-confirm").evaluate(colour)
    assert red != green
    first = page.locator("#item-name").inner_text()
    page.locator("#stage").focus()
    page.keyboard.press("o")  # leukemia: the model missed it
    expect(queue.nth(0)).to_contain_text("overturned · leukemia")
    page.keyboard.press("c")  # confirmed negative
    expect(queue.nth(1)).to_contain_text("confirmed · no leukemia")
    expect(queue.nth(0).locator(".q-state")).to_have_css("color", red)
    expect(queue.nth(1).locator(".q-state")).to_have_css("color", green)
    page.screenshot(path=str(ARTIFACTS / "qc-sample-decided.png"))

    # Counted on the batch page, filterable in the queue, in both exports.
    page.goto(f"{site.base}/batches/{batch_id}")
    expect(page.locator("#n-false-negative")).to_have_text("1")
    page.click("#review-false-negatives")
    expect(page.locator("#queue li")).to_have_count(1)
    expect(page.locator("#item-name")).to_have_text(first)
    expect(page.locator("#item-state")).to_contain_text("overturned · leukemia by dr.path")
    csv_text = page.request.get(f"{site.base}/api/v1/batches/{batch_id}/results?format=csv").text()
    flags = {r["file_name"]: r["false_negative"] for r in csv.DictReader(io.StringIO(csv_text))}
    assert flags == {n: str(n == first).lower() for n in flags} and len(flags) == len(ids)
    rows = _api(page, site, f"/api/v1/batches/{batch_id}/results?format=json")["results"]
    assert [r["file_name"] for r in rows if r["false_negative"]] == [first]
    assert problems == []


# ---- 4. /single -------------------------------------------------------------------------------


def _fake_single_result(page, row: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Answer /single's upload and result polls with ``row`` (the worker is tested elsewhere)."""
    answer = {"batch_id": "b1", "accepted": 1, "rejected": 0, "duplicate": 0, "files": []}
    page.route(
        "**/api/v1/batches",
        lambda route: route.fulfill(status=202, json=answer),
    )
    page.route(
        "**/api/v1/batches/b1/results",
        lambda route: route.fulfill(json={"batch_id": "b1", "total": 1, "results": [row]}),
    )
    image = smear_like_jpeg(7)
    page.route(
        f"**/api/v1/images/{row['image_id']}",
        lambda route: route.fulfill(body=image, content_type="image/jpeg"),
    )


SINGLE_ROW = {
    "image_id": 1,
    "file_name": "one cell.jpg",
    "state": "scored",
    "model_version": "lenet_lld_bn-test",
    "error": None,
}


@pytest.mark.parametrize(
    ("route", "p", "threshold", "verdict", "shown_p", "shown_threshold"),
    [
        ("flagged", 0.336, 0.2, "leukemia suspected", "0.336 (at or above", "0.200"),
        ("cleared", 0.4675, 0.468, "no leukemia detected", "0.4675 (below", "0.4680"),
        ("manual_review", 0.81, 0.468, "Cannot judge this image", "0.810 (not to be", "0.468"),
    ],
)
def test_single_states_the_verdict_route_p_and_threshold_plainly(
    site, pages, route, p, threshold, verdict, shown_p, shown_threshold
):
    from playwright.sync_api import expect

    problems: list[str] = []
    page = _signed_in(pages, site, "tech", problems)
    _fake_single_result(
        page,
        SINGLE_ROW
        | {
            "p_leukemia": p,
            "threshold": threshold,
            "route": route,
            "flagged": route != "cleared",
            "route_reason": "underexposed" if route == "manual_review" else None,
        },
    )
    page.goto(f"{site.base}/single")
    page.set_input_files(
        "#single-file", {"name": "one cell.jpg", "mimeType": "image/jpeg", "buffer": b"x"}
    )
    page.click("#single button[type=submit]")
    result = page.locator("#single-result")
    expect(page.locator("#single-class")).to_have_text(verdict)
    expect(page.locator("#single-route")).to_contain_text(route.replace("_", " ") + ":")
    expect(page.locator("#single-p")).to_contain_text(shown_p)
    expect(page.locator("#single-threshold")).to_have_text(shown_threshold)
    expect(result).not_to_contain_text("%")
    expect(result).not_to_contain_text("onfidence")
    if route == "manual_review":
        expect(page.locator("#single-reason")).to_contain_text("too dark")
    page.screenshot(path=str(ARTIFACTS / f"single-{route}.png"))
    _assert_axe_clean(page, f"/single ({route})")
    assert problems == []


# ---- issue 16: the model's B-ALL subtype ---------------------------------------------------------


def test_the_review_page_shows_the_subtype_of_images_that_go_to_a_person_only(site, pages):
    from playwright.sync_api import expect

    from tests.test_routes_shown import route_manual
    from tests.test_subtype import EARLY, PRE_B, PRO_B, with_subtypes

    # Flagged Pre-B, flagged by a network without the subtype head, manual review Pro-B, and
    # a cleared image whose stored subtype no page shows.
    batch_id, ids = site.seed([0.95, 0.9, 0.85, 0.2], "subtype batch", 1600)
    route_manual(site.database_url, [ids[2]], "underexposed")
    with_subtypes(site.database_url, {ids[0]: PRE_B, ids[2]: PRO_B, ids[3]: EARLY})
    problems: list[str] = []
    page = _signed_in(pages, site, "dr.path", problems)
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#item-name")).to_have_text("subtype_00.jpg")
    subtype, label = page.locator("#item-subtype"), page.locator("#item-subtype-label")
    expect(subtype).to_be_visible()
    expect(label).to_be_visible()
    expect(subtype).to_contain_text("Most likely subtype, if leukemic: Pre-B 0.910")
    expect(subtype).to_contain_text("Early pre-B 0.050 · Pre-B 0.910 · Pro-B 0.040")
    expect(subtype).to_contain_text("A model estimate, conditional on leukemia; not a diagnosis.")
    expect(page.locator("#big")).to_have_js_property("complete", True)
    page.screenshot(path=str(ARTIFACTS / "review-subtype.png"))
    _assert_axe_clean(page, "review with a subtype")
    page.locator("#stage").focus()
    page.keyboard.press("j")
    expect(page.locator("#item-name")).to_have_text("subtype_01.jpg")
    expect(subtype).to_be_hidden()
    expect(label).to_be_hidden()
    page.keyboard.press("j")
    expect(page.locator("#item-name")).to_have_text("subtype_02.jpg")
    expect(subtype).to_contain_text("Most likely subtype, if leukemic: Pro-B 0.700")
    expect(subtype).to_contain_text("the model cannot judge this image, so do not rely on it.")
    page.goto(f"{site.base}/review/sample/{batch_id}")
    expect(page.locator("#item-name")).to_have_text("subtype_03.jpg")
    expect(page.locator("#item-flag")).to_contain_text("cleared")
    expect(subtype).to_be_hidden()
    expect(label).to_be_hidden()
    # The specimen page, likewise: the estimates of the flagged and manual-review images.
    _specimen(site, ids, "SP-SUBTYPE")
    page.goto(f"{site.base}/specimens/SP-SUBTYPE")
    expect(page.locator(".subtype")).to_have_count(2)
    expect(page.locator(".subtype").first).to_contain_text(
        "Most likely subtype, if leukemic: Pre-B 0.910"
    )
    page.screenshot(path=str(ARTIFACTS / "specimen-subtype.png"), full_page=True)
    _assert_axe_clean(page, "specimen with subtypes")
    assert problems == []


@pytest.mark.parametrize(
    ("route", "with_head", "shown"),
    [("flagged", True, True), ("cleared", True, False), ("flagged", False, False)],
)
def test_single_shows_the_subtype_of_a_flagged_image_only(site, pages, route, with_head, shown):
    from playwright.sync_api import expect

    from tests.test_subtype import PRE_B

    problems: list[str] = []
    page = _signed_in(pages, site, "tech", problems)
    estimate = {"subtype": "pre_b", "subtype_probs": PRE_B} if with_head else {}
    _fake_single_result(
        page,
        SINGLE_ROW
        | estimate
        | {"p_leukemia": 0.8 if route == "flagged" else 0.1, "threshold": 0.5, "route": route},
    )
    page.goto(f"{site.base}/single")
    page.set_input_files(
        "#single-file", {"name": "one cell.jpg", "mimeType": "image/jpeg", "buffer": b"x"}
    )
    page.click("#single button[type=submit]")
    expect(page.locator("#single-route")).to_contain_text(route + ":")
    subtype = page.locator("#single-subtype")
    if shown:
        expect(subtype).to_contain_text("Most likely subtype, if leukemic: Pre-B 0.910")
        expect(subtype).to_contain_text("Early pre-B 0.050 · Pre-B 0.910 · Pro-B 0.040")
        expect(subtype).to_contain_text("not a diagnosis")
        expect(page.locator("#single-subtype-label")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "single-subtype.png"))
        _assert_axe_clean(page, "/single with a subtype")
    else:
        expect(subtype).to_be_hidden()
        expect(page.locator("#single-subtype-label")).to_be_hidden()
        expect(page.locator("#single-result")).not_to_contain_text("Most likely subtype")
    assert problems == []


# ---- 12. upload --------------------------------------------------------------------------------


def _batch_count(page, site: Site) -> int:  # type: ignore[no-untyped-def]
    return len(_api(page, site, "/api/v1/batches", "boss")["batches"])


def test_upload_warns_before_leaving_and_back_then_upload_records_no_second_batch(site, pages):
    from playwright.sync_api import expect

    page = pages()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.type), d.dismiss()))
    _login(page, site.base, "tech")
    files = [
        {"name": f"up_{i}.jpg", "mimeType": "image/jpeg", "buffer": _noise_jpeg(i)}
        for i in range(8)
    ]
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    page.goto(f"{site.base}/upload")
    page.set_input_files("#files", files)
    before = _batch_count(page, site)
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 200_000},
    )
    page.click("#upload button[type=submit]")
    button = page.locator("#upload button[type=submit]")
    expect(button).to_be_disabled()
    expect(button).to_have_text("Uploading…")
    # Disabled looks disabled: grey, not the accent colour of the live button.
    assert button.evaluate("el => getComputedStyle(el).cursor") == "not-allowed"
    assert "91, 63, 166" not in button.evaluate("el => getComputedStyle(el).backgroundColor")
    page.screenshot(path=str(ARTIFACTS / "upload-in-progress.png"))
    # Leaving mid-upload asks first (dismissed: the upload goes on).
    page.evaluate("() => { location.href = '/batches'; }")
    page.wait_for_timeout(300)
    assert "beforeunload" in dialogs
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    page.wait_for_url(re.compile(r"/batches/[^/]+$"), timeout=60_000)
    first = page.url
    assert _batch_count(page, site) == before + 1

    # Back, then the same files again from that page: the first batch, not a second one.
    page.go_back()
    page.wait_for_url(re.compile(r"/upload$"))
    page.set_input_files("#files", files)
    expect(button).to_be_enabled()
    page.click("#upload button[type=submit]")
    expect(page.locator("#upload-text")).to_contain_text("already uploaded from this page")
    assert page.locator("#already-uploaded").get_attribute("href") == first.split(site.base)[1]
    assert _batch_count(page, site) == before + 1
    page.screenshot(path=str(ARTIFACTS / "upload-already-uploaded.png"))
    # Other files from the same page are a new batch; so are the same ones, asked for.
    page.set_input_files("#files", files[:2])
    page.click("#upload button[type=submit]")
    page.wait_for_url(re.compile(r"/batches/[^/]+$"), timeout=60_000)
    second = page.url
    assert second != first and _batch_count(page, site) == before + 2
    page.go_back()
    page.set_input_files("#files", files[:2])
    page.click("#upload button[type=submit]")
    page.click("#upload-again")
    page.wait_for_url(re.compile(r"/batches/[^/]+$"), timeout=60_000)
    assert page.url not in (first, second) and _batch_count(page, site) == before + 3
    assert problems == []


def _noise_jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image as PILImage

    pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


# ---- issue 16: the explanation heatmap ------------------------------------------------------


def _box(page, selector: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box


def test_h_and_the_button_toggle_the_heatmap_over_the_image_with_its_note(site, pages):
    from playwright.sync_api import expect

    # A wide original (320x200), so the overlay must follow the image's drawn box.
    batch_id, (explained, waiting) = seed_scored(
        site.database_url,
        [0.95, 0.9],
        name="heatmap batch",
        file_names=["heat_00.jpg", "heat_01.jpg"],
        storage_dir=site.storage,
        blobs=[smear_like_jpeg(1500, size=(320, 200)), smear_like_jpeg(1501)],
    )
    give_heatmap(site.database_url, site.storage, explained)
    problems: list[str] = []
    page = _signed_in(pages, site, "dr.path", problems)
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#item-name")).to_have_text("heat_00.jpg")
    expect(page.locator("#big")).to_have_js_property("complete", True)
    toggle, overlay, note = (
        page.locator(s) for s in ("#heatmap-toggle", "#heatmap", "#heatmap-note")
    )
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(toggle).to_contain_text("Show heatmap")
    expect(overlay).to_be_hidden()
    expect(note).to_be_hidden()

    # H: the overlay over the image, and the note in plain words.
    page.locator("#stage").focus()
    page.keyboard.press("h")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(overlay).to_be_visible()
    expect(overlay).to_have_js_property("naturalWidth", 224)
    expect(note).to_be_visible()
    expect(note).to_have_text(
        "The heatmap shows where the network looked when it scored this image. "
        "It is not proof of leukaemia and not a diagnosis."
    )
    # Stretched over the drawn image (object-fit: contain), 320:200, centred in the stage.
    stage, box = _box(page, "#stage"), _box(page, "#heatmap")
    assert box["width"] / box["height"] == pytest.approx(320 / 200, rel=0.02)
    assert min(stage["width"] - box["width"], stage["height"] - box["height"]) < 2
    assert box["x"] + box["width"] / 2 == pytest.approx(stage["x"] + stage["width"] / 2, abs=2)
    assert box["y"] + box["height"] / 2 == pytest.approx(stage["y"] + stage["height"] / 2, abs=2)
    # Zoomed with the image.
    page.keyboard.press("+")
    assert "scale(1.25)" in (overlay.get_attribute("style") or "")
    page.screenshot(path=str(ARTIFACTS / "review-heatmap-on.png"))
    _assert_axe_clean(page, "review with the heatmap on")

    # A held H toggles once, not on every auto-repeat.
    for _ in range(10):
        page.keyboard.down("h")
        page.wait_for_timeout(40)
    page.keyboard.up("h")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(overlay).to_be_hidden()
    expect(note).to_be_hidden()

    # The button does the same.
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(overlay).to_be_visible()
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(overlay).to_be_hidden()

    # The next image has none: the page asks a worker for it and says what it heard; the
    # wish stays on.
    toggle.click()
    page.locator("#stage").focus()
    page.keyboard.press("j")
    expect(page.locator("#item-name")).to_have_text("heat_01.jpg")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#heatmap-status")).to_have_text(
        "Heatmap asked for, but no running worker has the model that scored this image "
        "(lenet_lld-test, eeeeeeeeeeee): its heatmap is made once one does."
    )
    expect(overlay).to_be_hidden()
    expect(note).to_be_visible()
    # A worker makes it: the page, asking every few seconds, shows it.
    give_heatmap(site.database_url, site.storage, waiting)
    expect(overlay).to_be_visible(timeout=15_000)
    expect(page.locator("#heatmap-status")).to_have_text("")
    # Back: the first image's heatmap again.
    page.keyboard.press("k")
    expect(overlay).to_be_visible()
    expect(page.locator("#heatmap-status")).to_have_text("")
    assert problems == []


# ---- 11. accessibility on every page, and the screenshots ---------------------------------------


def _assert_axe_clean(page, where: str) -> None:  # type: ignore[no-untyped-def]
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": AXE_TAGS}})
    found = [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(n["target"]) for n in v["nodes"][:4])
        for v in results.response["violations"]
    ]
    assert found == [], f"axe-core, {where}:\n" + "\n".join(found)


def _specimen(site: Site, image_ids: list[int], specimen_id: str) -> None:
    """Name the specimen these images were taken from, as an upload naming it would."""
    from sqlalchemy import update

    from db.models import Image
    from db.session import engine_for, session_factory

    with session_factory(engine_for(site.database_url)).begin() as session:
        session.execute(
            update(Image).where(Image.id.in_(image_ids)).values(specimen_id=specimen_id)
        )


def test_every_page_passes_axe_at_wcag_21_aa_and_is_screenshotted_at_three_widths(site, pages):
    from playwright.sync_api import expect

    batch_id, ids = site.seed([0.96, 0.93, 0.91, 0.4, 0.2, 0.1], "axe batch", 1400)
    seed_scored(site.database_url, [0.8], name="axe other")  # a second batch in the lists
    _specimen(site, ids[:2], "SP-0001")
    problems: list[str] = []
    anonymous = pages()
    _watch(anonymous, problems)
    admin = _signed_in(pages, site, "boss", problems)
    # The batch page with something to show: a decision, a rejected file and progress.
    admin.request.post(
        f"{site.base}/api/v1/images/{ids[0]}/reviews",
        headers={"Authorization": f"Bearer {site.tokens['boss']}"},
        data={"decision": "confirmed"},
    )
    shots = [
        (anonymous, "login", "/login", "#username, input[name=username]"),
        (admin, "batches", "/batches", "#batches tbody tr"),
        (admin, "batch", f"/batches/{batch_id}", "#n-total:not(:text('–'))"),
        (admin, "upload", "/upload", "#files"),
        (admin, "single", "/single", "#single-file"),
        (admin, "review", f"/review?batch={batch_id}", "#item-name:not(:empty)"),
        (admin, "review-filters", "/review?state=all&route=flagged", "#queue li"),
        (admin, "qc-sample", f"/review/sample/{batch_id}", "#item-name:not(:empty)"),
        (admin, "admin", "/admin", "#users"),
        (admin, "specimens", "/specimens", "h1"),
        (admin, "specimen", "/specimens/SP-0001", "h1"),
        (admin, "not-found", "/batches/no-such-batch", "h1"),
    ]
    for page, name, path, ready in shots:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            page.goto(f"{site.base}{path}")
            expect(page.locator(ready).first).to_be_visible()
            if page.locator("#big").count():
                expect(page.locator("#big")).to_have_js_property("complete", True)
            if page.locator(".bar").count():
                page.wait_for_timeout(500)  # the progress bar's width transition (0.4 s)
            page.screenshot(path=str(ARTIFACTS / f"page-{name}-{width}.png"), full_page=True)
        _assert_axe_clean(page, path)

    # The token page is the answer to a form post: shown once, checked once.
    admin.goto(f"{site.base}/admin")
    admin.locator("#users tbody tr").first.locator("input[name=label]").fill("scanner 3")
    admin.locator("#users tbody tr").first.locator("text=New API token").click()
    expect(admin.locator("#new-token")).to_be_visible()
    for width in WIDTHS:
        admin.set_viewport_size({"width": width, "height": 900})
        admin.screenshot(path=str(ARTIFACTS / f"page-token-created-{width}.png"), full_page=True)
    _assert_axe_clean(admin, "token created")
    # A decided queue item and the undo offer, and the problem box, are checked too.
    admin.goto(f"{site.base}/review?batch={batch_id}")
    expect(admin.locator("#item-name")).not_to_be_empty()
    admin.locator("#stage").focus()
    admin.keyboard.press("s")
    expect(admin.locator("#undo")).to_be_visible()
    admin.locator("#comment").fill("typed")
    admin.keyboard.press("Escape")
    admin.keyboard.press("k")
    expect(admin.locator("#decide-problem")).to_be_visible()
    _assert_axe_clean(admin, "review after a decision")
    assert _expected_console_errors(problems) == []


def test_queue_items_are_reachable_with_tab_and_open_with_enter(site, pages):
    from playwright.sync_api import expect

    batch_id, _ = site.seed([0.9, 0.8, 0.7], "tab batch", 1500)
    page = _signed_in(pages, site, "dr.path", [])
    page.goto(f"{site.base}/review?batch={batch_id}")
    expect(page.locator("#item-name")).to_have_text("tab_00.jpg")
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = "el => el.classList.contains('q-open') && el.textContent.includes('tab_01')"
        if page.evaluate(f"({focused})(document.activeElement)"):
            break
    else:
        pytest.fail("Tab never reached the second queue item")
    page.keyboard.press("Enter")
    expect(page.locator("#item-name")).to_have_text("tab_01.jpg")
    expect(page.locator("#queue li.current button")).to_have_attribute("aria-current", "true")
    # The focus stays on the item opened, so Tab goes on from there.
    assert page.evaluate("document.activeElement.textContent").endswith("tab_01.jpgunreviewed")
    expect(page.locator("#position")).to_have_attribute("aria-live", "polite")
