"""Every file sent has its row (duplicates included), one image content has one review across
batches, exports are safe in a spreadsheet, and the batch page lists its files (issue 11)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from sqlalchemy import func, select

from db import lifecycle
from db.models import Batch, Image, ImageState, ModelVersion, Result
from db.session import engine_for, session_factory
from tests.conftest import token_client


def _files(*items: tuple[str, bytes]):  # type: ignore[no-untyped-def]
    return {"images": [(io.BytesIO(data), name) for name, data in items]}


def _upload(client, items, batch_id: str | None = None, name: str = "lab A"):  # type: ignore[no-untyped-def]
    url = f"/api/v1/batches/{batch_id}/images" if batch_id else "/api/v1/batches"
    data = _files(*items) if batch_id else {"name": name, **_files(*items)}
    resp = client.post(url, data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def _score(database_url: str, p_by_name: dict[str, float], route: str | None = None) -> None:
    """Score the queued images as a worker would (claim, then finish with a result)."""
    sessions = session_factory(engine_for(database_url))
    with sessions.begin() as s:
        version = s.scalar(select(ModelVersion).where(ModelVersion.sha256 == "c" * 64))
        if version is None:
            version = ModelVersion(sha256="c" * 64, name="lenet_lld-test", threshold=0.5)
            s.add(version)
            s.flush()
        version_id = version.id
        queued = s.execute(
            select(Image.id, Image.original_name).where(Image.state == ImageState.QUEUED.value)
        ).all()
    claimed = lifecycle.claim(sessions, [i for i, _ in queued], version_id, max_attempts=5)
    names = dict(queued)
    results = []
    for c in claimed:
        p = p_by_name.get(names[c.image_id], 0.1)
        chosen = route or ("flagged" if p >= 0.5 else "cleared")
        results.append(
            lifecycle.NewResult(
                image_id=c.image_id,
                batch_id=c.batch_id,
                model_version_id=version_id,
                p_leukemia=p,
                flagged=chosen != "cleared",
                threshold=0.5,
                route=chosen,
                route_reason="out_of_focus" if chosen == "manual_review" else None,
                domain_distance=None,
                quality={},
                scored_at=datetime.now(UTC),
                worker="tests",
            )
        )
    lifecycle.finish(sessions, results, [], {c.batch_id for c in claimed})


def _csv_rows(client, batch_id: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/batches/{batch_id}/results?format=csv")
    assert resp.status_code == 200
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def test_every_file_sent_has_its_csv_row_duplicates_with_their_twins_result(
    app, client, db_settings, make_jpeg
):
    a, b = make_jpeg(1), make_jpeg(2)
    first = _upload(
        client,
        [("a.jpg", a), ("b.jpg", b), ("a-again.jpg", a), ("notes.jpg", b"not a picture")],
    )
    batch_id = first["batch_id"]
    assert (first["accepted"], first["rejected"], first["duplicate"]) == (2, 1, 1)
    twin = {f["file"]: f for f in first["files"]}
    assert twin["a-again.jpg"]["duplicate_of"] == twin["a.jpg"]["image_id"]
    assert twin["a-again.jpg"]["reason_code"] == "duplicate"
    assert twin["notes.jpg"]["reason_code"] == "not_an_image"
    # A later part repeats b: a duplicate of an earlier part's image.
    part = _upload(client, [("b-again.jpg", b), ("c.jpg", make_jpeg(3)), ("a3.jpg", a)], batch_id)
    assert (part["accepted"], part["duplicate"]) == (1, 2)
    _score(db_settings.database_url, {"a.jpg": 0.9, "b.jpg": 0.2, "c.jpg": 0.3})
    reviewer = token_client(app, db_settings.database_url, "dr", "reviewer")
    decided = reviewer.post(
        f"/api/v1/images/{twin['a.jpg']['image_id']}/reviews", json={"decision": "confirmed"}
    )
    assert decided.status_code == 201

    rows = _csv_rows(client, batch_id)
    assert len(rows) == 7  # 7 files sent: 7 rows, in the order they were sent
    by_name = {r["file_name"]: r for r in rows}
    assert [r["file_name"] for r in rows] == [
        "a.jpg",
        "b.jpg",
        "a-again.jpg",
        "notes.jpg",
        "b-again.jpg",
        "c.jpg",
        "a3.jpg",
    ]
    for copy, original in (("a-again.jpg", "a.jpg"), ("a3.jpg", "a.jpg"), ("b-again.jpg", "b.jpg")):
        row, twin_row = by_name[copy], by_name[original]
        assert row["state"] == "duplicate" and row["duplicate_of"] == twin_row["image_id"]
        assert row["reason_code"] == "duplicate" and original in row["reason"]
        for column in ("p_leukemia", "flagged", "route", "review_decision", "review_label"):
            assert row[column] == twin_row[column], column
    assert by_name["a3.jpg"]["review_decision"] == "confirmed"
    assert by_name["a3.jpg"]["review_label"] == "leukemia"
    status = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert (status["total"], status["duplicate"], status["rejected"]) == (7, 3, 1)
    assert status["state"] == "complete" and status["pending"] == 0
    assert status["reviews"]["confirmed"] == 1  # one image decided, shown on its two repeats
    # Never scored twice: only the three distinct contents have results.
    with session_factory(engine_for(db_settings.database_url))() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 3
    exported = client.get(f"/api/v1/batches/{batch_id}/results?format=json").get_json()
    assert len(exported["results"]) == 7
    assert {r["batch_name"] for r in exported["results"]} == {"lab A"}


def test_a_part_of_only_duplicates_leaves_a_complete_batch_complete(client, db_settings, make_jpeg):
    a = make_jpeg(1)
    batch_id = _upload(client, [("a.jpg", a)])["batch_id"]
    _score(db_settings.database_url, {"a.jpg": 0.2})
    assert client.get(f"/api/v1/batches/{batch_id}").get_json()["state"] == "complete"
    part = _upload(client, [("a2.jpg", a), ("junk.jpg", b"x")], batch_id)
    assert (part["accepted"], part["duplicate"], part["rejected"]) == (0, 1, 1)
    status = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert status["state"] == "complete" and status["pending"] == 0 and status["total"] == 3


def test_the_same_image_in_two_batches_is_decided_once_and_both_exports_agree(
    app, client, db_settings, make_jpeg
):
    same = make_jpeg(7)
    first = _upload(client, [("smear.jpg", same), ("other.jpg", make_jpeg(8))], name="monday")
    second = _upload(client, [("smear-copy.jpg", same)], name="tuesday")
    _score(db_settings.database_url, {"smear.jpg": 0.95, "smear-copy.jpg": 0.95})
    copy_a = first["files"][0]["image_id"]
    copy_b = second["files"][0]["image_id"]
    reviewer = token_client(app, db_settings.database_url, "dr", "reviewer")

    # The queue shows the content once, naming the other batch that holds it.
    queue = reviewer.get("/api/v1/review/queue?state=all").get_json()["items"]
    shown = [i for i in queue if i["image_id"] in (copy_a, copy_b)]
    assert len(shown) == 1
    assert [c["batch_name"] for c in shown[0]["copies"]] == ["tuesday"]
    # Two reviewers open the two copies at once: the second decision is a conflict.
    assert (
        reviewer.post(
            f"/api/v1/images/{copy_a}/reviews", json={"decision": "confirmed", "expected_seq": 0}
        ).status_code
        == 201
    )
    late = reviewer.post(
        f"/api/v1/images/{copy_b}/reviews", json={"decision": "overturned", "expected_seq": 0}
    )
    assert late.status_code == 409
    # Decided once: neither copy is left in the unreviewed queue, and either copy's page
    # shows the decision and its history.
    unreviewed = reviewer.get("/api/v1/review/queue").get_json()["items"]
    assert {copy_a, copy_b}.isdisjoint(i["image_id"] for i in unreviewed)
    item_b = reviewer.get(f"/api/v1/review/items/{copy_b}").get_json()
    assert item_b["state"] == "confirmed" and item_b["seq"] == 1
    assert [h["image_id"] for h in item_b["history"]] == [copy_a]
    # A later decision from the other copy extends the same history.
    assert (
        reviewer.post(
            f"/api/v1/images/{copy_b}/reviews", json={"decision": "second_opinion"}
        ).status_code
        == 201
    )
    monday = {r["file_name"]: r for r in _csv_rows(client, first["batch_id"])}["smear.jpg"]
    tuesday = _csv_rows(client, second["batch_id"])[0]
    for column in ("review_decision", "review_label", "reviewed_by", "reviewed_at"):
        assert monday[column] == tuesday[column], column
    assert monday["review_decision"] == "second_opinion"
    assert len(reviewer.get(f"/api/v1/review/items/{copy_a}").get_json()["history"]) == 2


def test_export_cells_that_a_spreadsheet_would_run_are_neutralised(client, db_settings, make_jpeg):
    names = [
        "=HYPERLINK('http://x','click').jpg",
        "+SUM(1+1).jpg",
        "-2+3.jpg",
        "@cmd.jpg",
        "\tTAB.jpg",
        "\rCR.jpg",
    ]
    batch_id = _upload(
        client,
        [(n, make_jpeg(i)) for i, n in enumerate(names)] + [("broken.jpg", b"text")],
        name="=1+1",
    )["batch_id"]
    _score(db_settings.database_url, {names[0]: 0.000012, names[1]: 0.75})
    rows = _csv_rows(client, batch_id)
    for row in rows[:-1]:
        assert row["file_name"].startswith("'"), row["file_name"]
        assert row["batch_name"] == "'=1+1"
        assert row["flagged"] in ("true", "false")
        # One fixed-point form for every number (no 1.2e-05 beside 0.75).
        assert "e" not in row["p_leukemia"] and len(row["p_leukemia"].split(".")[1]) == 6
    assert rows[0]["p_leukemia"] == "0.000012" and rows[1]["flagged"] == "true"
    rejected = rows[-1]
    assert rejected["reason_code"] == "not_an_image"
    assert "Pillow" not in rejected["reason"] and "not an image" in rejected["reason"]
    # The JSON export keeps the names as sent: only spreadsheets run formulas.
    exported = client.get(f"/api/v1/batches/{batch_id}/results?format=json").get_json()
    assert exported["results"][0]["file_name"] == names[0]


def test_the_batch_image_list_puts_what_needs_a_person_first_in_keyset_pages(
    client, db_settings, make_jpeg
):
    items = [(f"{i}.jpg", make_jpeg(i)) for i in range(7)]
    batch_id = _upload(client, items + [("dup.jpg", make_jpeg(0)), ("bad.jpg", b"x")])["batch_id"]
    _score(db_settings.database_url, {"2.jpg": 0.8, "5.jpg": 0.9, "6.jpg": 0.6})
    seen, after = [], ""
    while True:
        page = client.get(f"/api/v1/batches/{batch_id}/images?limit=2&after={after}").get_json()
        seen += page["items"]
        if page["next"] is None:
            break
        after = page["next"]
    names = [i["file_name"] for i in seen]
    assert len(names) == len(set(names)) == 9  # every file once, none repeated across pages
    # Flagged first, in upload order; then cleared (a duplicate with its twin's route), then
    # the files that were never scored.
    assert names == [
        "2.jpg",
        "5.jpg",
        "6.jpg",
        "0.jpg",
        "1.jpg",
        "3.jpg",
        "4.jpg",
        "dup.jpg",
        "bad.jpg",
    ]
    assert [i["route"] for i in seen[:3]] == ["flagged"] * 3
    assert seen[-1]["file_name"] == "bad.jpg" and seen[-1]["reason_code"] == "not_an_image"
    dup = next(i for i in seen if i["file_name"] == "dup.jpg")
    assert dup["state"] == "duplicate" and dup["route"] == "cleared" and dup["has_image"]
    assert dup["duplicate_of_file"] == "0.jpg"
    bad_cursor = client.get(f"/api/v1/batches/{batch_id}/images?after=x:1")
    assert bad_cursor.status_code == 400


def test_the_batch_list_can_hide_one_image_batches(client, db_settings, make_jpeg):
    many = _upload(client, [("a.jpg", make_jpeg(1)), ("b.jpg", make_jpeg(2))])["batch_id"]
    single = _upload(client, [("one.jpg", make_jpeg(3))])["batch_id"]
    every = {b["id"] for b in client.get("/api/v1/batches").get_json()["batches"]}
    assert {many, single} <= every
    hidden = client.get("/api/v1/batches?min_images=2").get_json()["batches"]
    assert [b["id"] for b in hidden] == [many]
    assert hidden[0]["duplicate"] == 0 and hidden[0]["rejected"] == 0
    with session_factory(engine_for(db_settings.database_url))() as s:
        assert s.scalar(select(Batch.name).where(Batch.id == single)) == "lab A"


def test_a_thumbnail_is_a_small_jpeg_even_of_a_tiff_no_browser_shows(client):
    from PIL import Image as Picture

    tiff = io.BytesIO()
    Picture.new("RGB", (600, 400), (200, 120, 160)).save(tiff, "TIFF")
    sent = _upload(client, [("slide.tif", tiff.getvalue()), ("notes.txt", b"x")])
    stored, rejected = (f["image_id"] for f in sent["files"])
    resp = client.get(f"/api/v1/images/{stored}/thumbnail")
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg"
    assert "private" in resp.headers["Cache-Control"]
    with Picture.open(io.BytesIO(resp.data)) as small:
        assert small.format == "JPEG" and small.size == (128, 85)
    assert client.get(f"/api/v1/images/{rejected}/thumbnail").status_code == 404
