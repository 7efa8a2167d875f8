"""Review decisions: append-only history, queue order and keyset pages, threshold, QC, export."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, text, update

from db.accounts import find_user
from db.audit import AppendOnlyError
from db.errors import Conflict
from db.models import Result, Review, utcnow
from db.reviews import UNDO_WINDOW_S, undo_decision
from db.session import engine_for, session_factory
from tests.conftest import browser_login, token_client
from tests.reviewdata import EVERY_LAB, seed_scored


@pytest.fixture
def reviewer(app, db_settings):
    return token_client(app, db_settings.database_url, "rita", "reviewer")


def _decide(client, image_id: int, decision: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/images/{image_id}/reviews", json={"decision": decision, **extra})


def test_decisions_are_appended_and_the_latest_one_is_current(app, db_settings, reviewer):
    _, ids = seed_scored(db_settings.database_url, [0.9, 0.8])
    second = token_client(app, db_settings.database_url, "sam", "reviewer")
    assert _decide(reviewer, ids[0], "second_opinion", comment="unsure, blasts?").status_code == 201
    assert _decide(second, ids[0], "confirmed", comment="agree: blasts").status_code == 201
    assert _decide(reviewer, ids[0], "overturned").status_code == 201
    history = reviewer.get(f"/api/v1/images/{ids[0]}/reviews").json["reviews"]
    assert [(h["seq"], h["decision"], h["previous_decision"], h["reviewer"]) for h in history] == [
        (1, "second_opinion", None, "rita"),
        (2, "confirmed", "second_opinion", "sam"),
        (3, "overturned", "confirmed", "rita"),
    ]
    assert history[0]["comment"] == "unsure, blasts?"
    item = reviewer.get(f"/api/v1/review/items/{ids[0]}").json
    assert item["state"] == "overturned" and item["reviewed_by"] == "rita"
    assert item["label"] == "no_leukemia"  # flagged image overturned
    assert len(item["history"]) == 3
    admin = token_client(app, db_settings.database_url, "boss", "admin")
    trail = [
        (e["actor"], e["details"]["decision"], e["details"]["previous"])
        for e in reversed(admin.get("/api/v1/audit").json["events"])
        if e["action"] == "review.decide"
    ]
    assert trail == [
        ("rita", "second_opinion", None),
        ("sam", "confirmed", "second_opinion"),
        ("rita", "overturned", "confirmed"),
    ]


def test_a_recorded_decision_cannot_be_changed_or_deleted(db_settings, reviewer):
    _, ids = seed_scored(db_settings.database_url, [0.9])
    assert _decide(reviewer, ids[0], "confirmed").status_code == 201
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions() as s:
        review = s.scalars(select(Review)).one()
        review.decision = "overturned"
        with pytest.raises(AppendOnlyError):
            s.flush()
        s.rollback()
        s.delete(s.scalars(select(Review)).one())
        with pytest.raises(AppendOnlyError):
            s.flush()
    # Even SQL that bypasses the application is refused by the database's triggers.
    for statement in (
        update(Review).values(decision="overturned"),
        delete(Review),
        text("UPDATE audit_event SET actor_name = 'someone else'"),
    ):
        with sessions() as s, pytest.raises(Exception, match="append-only"):
            s.execute(statement)
            s.commit()
    with sessions() as s:
        assert s.scalars(select(Review.decision)).all() == ["confirmed"]


def test_a_decision_on_a_stale_view_is_409(db_settings, reviewer):
    _, ids = seed_scored(db_settings.database_url, [0.9])
    assert _decide(reviewer, ids[0], "confirmed", expected_seq=0).status_code == 201
    stale = _decide(reviewer, ids[0], "overturned", expected_seq=0)
    assert stale.status_code == 409 and "reload" in stale.json["error"]
    assert _decide(reviewer, ids[0], "overturned", expected_seq=1).status_code == 201


@pytest.mark.parametrize(
    "body", [{"decision": "maybe"}, {"decision": "confirmed", "comment": 5}, {"x": 1}]
)
def test_malformed_decisions_are_400(db_settings, reviewer, body):
    _, ids = seed_scored(db_settings.database_url, [0.9])
    assert reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json=body).status_code == 400


def test_unknown_or_unscored_images_cannot_be_reviewed(db_settings, reviewer):
    assert _decide(reviewer, 999_999, "confirmed").status_code == 404


def test_queue_is_most_suspicious_first_and_keyset_pages_cover_it_exactly(db_settings, reviewer):
    scores = [0.55, 0.99, 0.7, 0.7, 0.1, 0.86, 0.7, 0.51, 0.3, 0.93]
    batch_a, ids = seed_scored(db_settings.database_url, scores)
    batch_b, _ = seed_scored(db_settings.database_url, [0.97, 0.2])
    seen, after = [], None
    while True:
        url = "/api/v1/review/queue?limit=3" + (f"&after={after}" if after else "")
        page = reviewer.get(url).json
        seen += page["items"]
        after = page["next"]
        if after is None:
            break
    ps = [i["p_leukemia"] for i in seen]
    assert ps == sorted(ps, reverse=True)
    assert len(seen) == 9 and len({i["image_id"] for i in seen}) == 9  # 8 + 1 flagged, no dup
    assert all(i["flagged"] and i["state"] == "unreviewed" for i in seen)
    only_a = reviewer.get(f"/api/v1/review/queue?batch={batch_a}").json["items"]
    assert {i["batch_id"] for i in only_a} == {batch_a} and len(only_a) == 8
    band = reviewer.get("/api/v1/review/queue?min_p=0.6&max_p=0.9").json["items"]
    assert sorted(i["p_leukemia"] for i in band) == [0.7, 0.7, 0.7, 0.86]
    asc = reviewer.get(f"/api/v1/review/queue?batch={batch_a}&order=asc").json["items"]
    assert asc[0]["p_leukemia"] == 0.51
    # decided items leave the default (unreviewed) view and appear under their state
    _decide(reviewer, ids[1], "confirmed")
    _decide(reviewer, ids[5], "second_opinion")
    unreviewed = reviewer.get(f"/api/v1/review/queue?batch={batch_a}").json["items"]
    assert ids[1] not in {i["image_id"] for i in unreviewed} and len(unreviewed) == 6
    confirmed = reviewer.get("/api/v1/review/queue?state=confirmed").json["items"]
    assert [i["image_id"] for i in confirmed] == [ids[1]]
    everything = reviewer.get(f"/api/v1/review/queue?batch={batch_a}&state=all").json["items"]
    assert len(everything) == 8
    assert reviewer.get("/api/v1/review/queue?state=nonsense").status_code == 400
    assert reviewer.get("/api/v1/review/queue?min_p=2").status_code == 400
    assert reviewer.get("/api/v1/review/queue?after=garbage").status_code == 400
    since = reviewer.get("/api/v1/review/queue?since=2999-01-01").json["items"]
    assert since == []
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    assert len(reviewer.get(f"/api/v1/review/queue?until={today}").json["items"]) == 7
    assert reviewer.get("/api/v1/review/queue?until=2000-01-01").json["items"] == []
    assert reviewer.get("/api/v1/review/queue?since=yesterday").status_code == 400


def test_exploring_a_threshold_shows_what_would_be_flagged_and_stores_nothing(
    db_settings, reviewer
):
    batch, _ = seed_scored(db_settings.database_url, [0.1, 0.35, 0.45, 0.6, 0.9])
    lower = reviewer.get(f"/api/v1/batches/{batch}/threshold?t=0.3").json
    assert (lower["would_flag"], lower["flagged"], lower["scored"]) == (4, 2, 5)
    assert lower["model_threshold"] == 0.5
    items = reviewer.get(f"/api/v1/review/queue?batch={batch}&threshold=0.3").json["items"]
    assert [i["p_leukemia"] for i in items] == [0.9, 0.6, 0.45, 0.35]
    higher = reviewer.get(f"/api/v1/review/queue?batch={batch}&threshold=0.8").json["items"]
    assert [i["p_leukemia"] for i in higher] == [0.9]
    assert reviewer.get("/api/v1/review/queue?threshold=0.3").status_code == 400
    with session_factory(engine_for(db_settings.database_url))() as s:
        assert sorted(s.scalars(select(Result.flagged))) == [False, False, False, True, True]


def test_qc_sample_is_unflagged_images_that_can_be_overturned_to_positive(db_settings, reviewer):
    batch, ids = seed_scored(db_settings.database_url, [0.9, 0.1, 0.2, 0.3, 0.95])
    sample = reviewer.get(f"/api/v1/batches/{batch}/sample?n=10").json["items"]
    assert sorted(i["image_id"] for i in sample) == [ids[1], ids[2], ids[3]]
    assert reviewer.get(f"/api/v1/batches/{batch}/sample?n=2").json["items"].__len__() == 2
    saved = _decide(reviewer, ids[2], "overturned", comment="blasts missed by the model")
    assert saved.status_code == 201 and saved.json["label"] == "leukemia"
    assert _decide(reviewer, ids[3], "confirmed").json["label"] == "no_leukemia"


def test_export_shows_each_images_current_decision_and_reviewer(app, db_settings, reviewer):
    batch, ids = seed_scored(db_settings.database_url, [0.9, 0.8, 0.1])
    other = token_client(app, db_settings.database_url, "sam", "reviewer")
    _decide(reviewer, ids[0], "second_opinion")
    _decide(other, ids[0], "confirmed", comment="clear blasts")
    _decide(reviewer, ids[1], "overturned", comment="artefact")
    rows = list(
        csv.DictReader(
            io.StringIO(
                reviewer.get(f"/api/v1/batches/{batch}/results?format=csv").get_data(as_text=True)
            )
        )
    )
    by_id = {int(r["image_id"]): r for r in rows}
    assert (by_id[ids[0]]["review_decision"], by_id[ids[0]]["reviewed_by"]) == ("confirmed", "sam")
    assert by_id[ids[0]]["review_label"] == "leukemia"
    assert by_id[ids[0]]["review_comment"] == "clear blasts" and by_id[ids[0]]["reviewed_at"]
    assert (by_id[ids[1]]["review_decision"], by_id[ids[1]]["reviewed_by"]) == (
        "overturned",
        "rita",
    )
    assert by_id[ids[2]]["review_decision"] == "" and by_id[ids[2]]["reviewed_by"] == ""
    exported = reviewer.get(f"/api/v1/batches/{batch}/results?format=json")
    assert exported.mimetype == "application/json"
    body = json.loads(exported.get_data(as_text=True))
    assert [r["review_decision"] for r in body["results"]] == ["confirmed", "overturned", None]
    paged = reviewer.get(f"/api/v1/batches/{batch}/results").json["results"]
    assert paged[1]["reviewed_by"] == "rita"
    status = reviewer.get(f"/api/v1/batches/{batch}").json
    assert status["reviews"] == {
        "confirmed": 1,
        "overturned": 1,
        "second_opinion": 0,
        "false_negative": 0,
    }


def test_file_names_batch_names_and_comments_are_escaped_in_pages(app, db_settings):
    evil = '<script>alert("x")</script>.jpg'
    batch, ids = seed_scored(
        db_settings.database_url, [0.9], name="<b>batch</b><script>1</script>", file_names=[evil]
    )
    admin = browser_login(app, db_settings.database_url, "boss", "admin")
    page = admin.get(f"/batches/{batch}").get_data(as_text=True)
    assert "<script>1</script>" not in page and "&lt;script&gt;1&lt;/script&gt;" in page
    assert "default-src 'self'" in admin.get(f"/batches/{batch}").headers["Content-Security-Policy"]
    reviewer = token_client(app, db_settings.database_url, "rita", "reviewer")
    _decide(reviewer, ids[0], "confirmed", comment="<img src=x onerror=alert(1)>")
    boss = token_client(app, db_settings.database_url, "boss", "admin")
    made = boss.post(
        "/api/v1/users", json={"name": "<i>eve</i>", "role": "uploader", "password": "p" * 10}
    )
    assert made.status_code == 201
    admin_page = admin.get("/admin").get_data(as_text=True)
    assert "<i>eve</i>" not in admin_page and "&lt;i&gt;eve&lt;/i&gt;" in admin_page
    review_page = admin.get(f"/review?batch={batch}").get_data(as_text=True)
    assert "<script>1</script>" not in review_page and "&lt;b&gt;batch" in review_page


def test_undo_appends_a_withdrawn_row_and_leaves_the_image_undecided(app, db_settings, reviewer):
    batch, ids = seed_scored(db_settings.database_url, [0.9, 0.8])
    saved = _decide(reviewer, ids[0], "confirmed", comment="blasts", expected_seq=0)
    assert saved.status_code == 201 and saved.json["undo_until"] > saved.json["created_at"]
    undone = reviewer.post(f"/api/v1/images/{ids[0]}/reviews/1/undo")
    assert undone.status_code == 201, undone.json
    assert (undone.json["decision"], undone.json["previous_decision"]) == ("withdrawn", "confirmed")
    # The trail keeps both rows; the image is undecided and back in the unreviewed queue.
    history = reviewer.get(f"/api/v1/images/{ids[0]}/reviews").json["reviews"]
    assert [(h["seq"], h["decision"], h["comment"]) for h in history] == [
        (1, "confirmed", "blasts"),
        (2, "withdrawn", ""),
    ]
    item = reviewer.get(f"/api/v1/review/items/{ids[0]}").json
    assert (item["state"], item["seq"], item["reviewed_by"]) == ("unreviewed", 2, None)
    queue = reviewer.get(f"/api/v1/review/queue?batch={batch}").json["items"]
    assert ids[0] in {i["image_id"] for i in queue}
    body = json.loads(reviewer.get(f"/api/v1/batches/{batch}/results?format=json").data)
    row = next(r for r in body["results"] if r["image_id"] == ids[0])
    assert (row["review_decision"], row["reviewed_by"], row["review_comment"]) == (None,) * 3
    assert reviewer.get(f"/api/v1/batches/{batch}").json["reviews"]["confirmed"] == 0
    admin = token_client(app, db_settings.database_url, "boss", "admin")
    actions = [e["action"] for e in admin.get("/api/v1/audit").json["events"]]
    assert [a for a in actions if a.startswith("review.")] == ["review.undo", "review.decide"]
    # The next decision extends the same history.
    assert _decide(reviewer, ids[0], "overturned", expected_seq=2).status_code == 201


def test_only_the_own_latest_recent_decision_can_be_undone(app, db_settings, reviewer):
    _, ids = seed_scored(db_settings.database_url, [0.9, 0.8])
    other = token_client(app, db_settings.database_url, "sam", "reviewer")
    _decide(reviewer, ids[0], "confirmed")
    assert other.post(f"/api/v1/images/{ids[0]}/reviews/1/undo").status_code == 409
    _decide(other, ids[0], "overturned")
    stale = reviewer.post(f"/api/v1/images/{ids[0]}/reviews/1/undo")
    assert stale.status_code == 409 and "by sam: it is now overturned" in stale.json["error"]
    assert other.post(f"/api/v1/images/{ids[0]}/reviews/2/undo").status_code == 201
    assert other.post(f"/api/v1/images/{ids[0]}/reviews/3/undo").status_code == 409  # an undo
    assert reviewer.post(f"/api/v1/images/{ids[1]}/reviews/1/undo").status_code == 409
    # Too late: the same request a minute and more after the decision is refused.
    _decide(reviewer, ids[1], "confirmed")
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        rita = find_user(s, "rita")
        assert rita is not None
        later = utcnow() + timedelta(seconds=UNDO_WINDOW_S + 1)
        with pytest.raises(Conflict, match="for 60 seconds only"):
            undo_decision(s, ids[1], 1, rita, EVERY_LAB, now=later)
        assert (
            undo_decision(s, ids[1], 1, rita, EVERY_LAB, now=later - timedelta(seconds=2)).seq == 2
        )


def test_a_negative_overturned_in_qc_is_counted_filterable_and_exported(db_settings, reviewer):
    batch, ids = seed_scored(db_settings.database_url, [0.9, 0.1, 0.2, 0.3])
    _decide(reviewer, ids[0], "overturned")  # a flagged image overturned: not a false negative
    _decide(reviewer, ids[1], "overturned", comment="blasts missed")  # cleared -> leukemia
    _decide(reviewer, ids[2], "confirmed")
    _decide(reviewer, ids[3], "overturned")
    reviewer.post(f"/api/v1/images/{ids[3]}/reviews/1/undo")  # taken back: undecided again
    reviews = reviewer.get(f"/api/v1/batches/{batch}").json["reviews"]
    assert (reviews["false_negative"], reviews["overturned"]) == (1, 2)
    found = reviewer.get(f"/api/v1/review/queue?batch={batch}&state=false_negative").json["items"]
    assert [(i["image_id"], i["false_negative"]) for i in found] == [(ids[1], True)]
    assert (
        reviewer.get("/api/v1/review/queue?state=false_negative&route=flagged").json["items"] == []
    )
    rows = csv.DictReader(
        io.StringIO(
            reviewer.get(f"/api/v1/batches/{batch}/results?format=csv").get_data(as_text=True)
        )
    )
    assert {int(r["image_id"]): r["false_negative"] for r in rows} == {
        ids[0]: "false",
        ids[1]: "true",
        ids[2]: "false",
        ids[3]: "false",
    }
    body = json.loads(reviewer.get(f"/api/v1/batches/{batch}/results?format=json").data)
    assert [r["false_negative"] for r in body["results"]] == [False, True, False, False]
