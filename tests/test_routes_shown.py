"""Routes where a person looks: the review queue's route filter and items, the threshold
explorer, decisions on images the model cannot judge, the pages' hooks, OpenAPI and submit."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
from sqlalchemy import update

from db.models import Result
from db.session import engine_for, session_factory
from model.gate import REASON_TEXT, Route, RouteReason
from tests import test_reviews
from tests.conftest import token_client
from tests.reviewdata import seed_scored

# The review tests' reviewer token client (the app on each database is conftest's ``app``).
reviewer = test_reviews.reviewer
UNDER, EMPTY = RouteReason.UNDEREXPOSED.value, RouteReason.EMPTY_FIELD.value


def route_manual(database_url: str, image_ids: Sequence[int], reason: str) -> None:
    """Mark these seeded images as the worker marks one the model cannot judge."""
    engine = engine_for(database_url)
    with session_factory(engine).begin() as session:
        session.execute(
            update(Result)
            .where(Result.image_id.in_(list(image_ids)))
            .values(
                route=Route.MANUAL_REVIEW.value,
                route_reason=reason,
                flagged=True,
                domain_distance=12.5,
            )
        )


def _seed(database_url: str) -> tuple[str, list[int]]:
    """Flagged 0.9 and 0.7, manual review 0.8 (underexposed) and 0.05 (empty), cleared 0.2."""
    batch, ids = seed_scored(database_url, [0.9, 0.8, 0.7, 0.2, 0.05])
    route_manual(database_url, [ids[1]], UNDER)
    route_manual(database_url, [ids[4]], EMPTY)
    return batch, ids


def _queue(client, query: str = "") -> list[dict]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/review/queue?{query}")
    assert response.status_code == 200, response.json
    return response.json["items"]


def test_the_queue_shows_every_image_that_needs_a_person_and_filters_by_route(
    db_settings, reviewer
):
    batch, ids = _seed(db_settings.database_url)
    everything = _queue(reviewer, f"batch={batch}")
    assert [i["image_id"] for i in everything] == [ids[0], ids[1], ids[2], ids[4]]
    assert _queue(reviewer, f"batch={batch}&route=all") == everything
    assert _queue(reviewer, f"batch={batch}&route=") == everything
    flagged = _queue(reviewer, f"batch={batch}&route=flagged")
    assert [(i["image_id"], i["route"]) for i in flagged] == [
        (ids[0], "flagged"),
        (ids[2], "flagged"),
    ]
    manual = _queue(reviewer, "route=manual_review")  # across batches too
    assert [i["image_id"] for i in manual] == [ids[1], ids[4]]
    first = manual[0]
    assert (first["route"], first["route_reason"]) == ("manual_review", UNDER)
    assert first["route_reason_text"] == REASON_TEXT[UNDER] == "too dark (underexposed)"
    assert first["domain_distance"] == 12.5
    assert manual[1]["route_reason_text"] == REASON_TEXT[EMPTY]
    assert flagged[0]["route_reason"] is None and flagged[0]["route_reason_text"] is None
    # The single item (the review panel's refresh) carries the same fields.
    item = reviewer.get(f"/api/v1/review/items/{ids[4]}").json
    assert (item["route"], item["route_reason"]) == ("manual_review", EMPTY)
    assert item["route_reason_text"] == REASON_TEXT[EMPTY]
    # Keyset pages within one route cover it exactly, in order.
    seen, after = [], None
    while True:
        page = reviewer.get(
            "/api/v1/review/queue?route=manual_review&limit=1"
            + (f"&after={after}" if after else "")
        ).json
        seen += [i["image_id"] for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [ids[1], ids[4]]
    # Decided manual-review images leave the unreviewed view of their route.
    assert (
        reviewer.post(
            f"/api/v1/images/{ids[1]}/reviews", json={"decision": "confirmed"}
        ).status_code
        == 201
    )
    assert [i["image_id"] for i in _queue(reviewer, "route=manual_review")] == [ids[4]]
    done = _queue(reviewer, "route=manual_review&state=confirmed")
    assert [i["image_id"] for i in done] == [ids[1]]


@pytest.mark.parametrize("bad", ["cleared", "manual", "FLAGGED", "flagged,manual_review"])
def test_an_unknown_route_filter_is_400(db_settings, reviewer, bad):
    response = reviewer.get(f"/api/v1/review/queue?route={bad}")
    assert response.status_code == 400
    assert "route must be one of all, flagged, manual_review" in response.json["error"]


def test_deciding_an_image_the_model_cannot_judge_labels_it_positive_or_negative(
    db_settings, reviewer
):
    _, ids = _seed(db_settings.database_url)
    # Both are manual review; one has a high score and one a low one: the score plays no part.
    leukemia = reviewer.post(f"/api/v1/images/{ids[4]}/reviews", json={"decision": "confirmed"})
    assert leukemia.status_code == 201 and leukemia.json["label"] == "leukemia"
    none = reviewer.post(f"/api/v1/images/{ids[1]}/reviews", json={"decision": "overturned"})
    assert none.status_code == 201 and none.json["label"] == "no_leukemia"


def test_the_threshold_explorer_moves_only_images_the_model_may_judge(db_settings, reviewer):
    batch, ids = _seed(db_settings.database_url)
    counts = reviewer.get(f"/api/v1/batches/{batch}/threshold?t=0.1").json
    # 0.9, 0.7, 0.2 are judged; 0.8 and 0.05 go to a person at any threshold.
    assert (counts["would_flag"], counts["flagged"], counts["manual_review"], counts["scored"]) == (
        3,
        2,
        2,
        5,
    )
    low = _queue(reviewer, f"batch={batch}&threshold=0.1")
    assert [i["image_id"] for i in low] == [ids[0], ids[1], ids[2], ids[3], ids[4]]
    high = _queue(reviewer, f"batch={batch}&threshold=0.85")
    assert [i["image_id"] for i in high] == [ids[0], ids[1], ids[4]]
    only_flagged = _queue(reviewer, f"batch={batch}&threshold=0.85&route=flagged")
    assert [i["image_id"] for i in only_flagged] == [ids[0]]
    # 0.8 is over 0.75 but the model cannot judge it: never flagged by a threshold.
    judged = _queue(reviewer, f"batch={batch}&threshold=0.75&route=flagged")
    assert [i["image_id"] for i in judged] == [ids[0]]
    only_manual = _queue(reviewer, f"batch={batch}&threshold=0.99&route=manual_review")
    assert [i["image_id"] for i in only_manual] == [ids[1], ids[4]]


def test_the_batch_json_counts_routes_apart(db_settings, reviewer):
    batch, _ = _seed(db_settings.database_url)
    body = reviewer.get(f"/api/v1/batches/{batch}").json
    assert (body["flagged"], body["cleared"], body["manual_review"]) == (2, 1, 2)
    assert body["drift_warning"] is None
    rows = reviewer.get(f"/api/v1/batches/{batch}/results").json["results"]
    assert [(r["route"], r["route_reason"]) for r in rows] == [
        ("flagged", None),
        ("manual_review", UNDER),
        ("flagged", None),
        ("cleared", None),
        ("manual_review", EMPTY),
    ]


def test_pages_carry_the_route_hooks_their_scripts_fill(app, db_settings):
    from tests.test_access import browser_login

    batch, _ = _seed(db_settings.database_url)
    reviewer = browser_login(app, db_settings.database_url, "rita", "reviewer")
    page = reviewer.get(f"/batches/{batch}").get_data(as_text=True)
    assert 'id="n-manual"' in page and "needs manual review" in page
    assert 'id="drift-warning"' in page
    assert f"/review?batch={batch}&amp;route=manual_review" in page
    review = reviewer.get(f"/review?batch={batch}&route=manual_review").get_data(as_text=True)
    assert re.search(r'<option value="manual_review" selected>', review), review
    assert 'id="item-gate"' in review
    single = reviewer.get("/single").get_data(as_text=True)
    found = re.search(r"data-reasons='([^']*)'", single)
    assert found, single
    import html

    assert json.loads(html.unescape(found.group(1))) == {str(k): v for k, v in REASON_TEXT.items()}


def test_openapi_describes_routes_from_the_gate_and_the_queue_filter(app, db_settings):
    spec = token_client(app, db_settings.database_url).get("/api/v1/openapi.json").json
    row = spec["paths"]["/api/v1/batches/{batch_id}/results"]["get"]["responses"]["200"]
    props = row["content"]["application/json"]["schema"]["properties"]["results"]["items"]
    assert props["properties"]["route"]["enum"] == [*(r.value for r in Route), None]
    assert set(props["properties"]) >= {"route", "route_reason", "domain_distance"}
    batch = spec["paths"]["/api/v1/batches/{batch_id}"]["get"]["responses"]["200"]
    fields = batch["content"]["application/json"]["schema"]["properties"]
    assert {"flagged", "cleared", "manual_review", "drift", "drift_warning"} <= set(fields)
    params = spec["paths"]["/api/v1/review/queue"]["get"]["parameters"]
    route = next(p for p in params if p["name"] == "route")
    assert route["schema"]["enum"] == ["all", "flagged", "manual_review"]


def test_submit_prints_every_route_and_the_drift_warning():
    from leukoscreen.submit import summary

    status = {
        "counts": {"scored": 10, "failed": 1, "rejected": 2},
        "flagged": 3,
        "cleared": 5,
        "manual_review": 2,
        "drift_warning": None,
    }
    assert summary(status) == (
        "scored 10: flagged 3, cleared 5, needs manual review 2; failed 1, rejected 2"
    )
    warned = summary({**status, "counts": {}, "drift_warning": "These images differ."})
    assert warned.startswith("scored 0: flagged 3")
    assert warned.endswith("\nWARNING: These images differ.")
