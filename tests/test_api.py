from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from api import create_app
from db.models import Image, ImageState
from db.session import engine_for, session_factory
from tests.conftest import token_client


def _queued_messages(settings) -> list[list[int]]:
    """Task payloads waiting in the filesystem broker: the image ids of each chunk."""
    chunks = []
    for path in sorted(settings.broker_dir.glob("*.msg")):
        body = json.loads(path.read_text())
        import base64

        args = json.loads(base64.b64decode(body["body"]))[0]
        chunks.append(args[0])
    return chunks


def _files(*items: tuple[str, bytes]):
    return {"images": [(io.BytesIO(data), name) for name, data in items]}


def test_upload_accepts_valid_rejects_corrupt_and_enqueues_chunks(client, db_settings, make_jpeg):
    items = [(f"cell_{i}.jpg", make_jpeg(i)) for i in range(10)]
    items += [("broken.jpg", make_jpeg(99)[:500]), ("notes.jpg", b"just text")]
    resp = client.post(
        "/api/v1/batches",
        data={"name": "lab A", **_files(*items)},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202, resp.json
    body = resp.json
    assert (body["accepted"], body["rejected"], body["duplicate"]) == (10, 2, 0)
    assert resp.headers["Location"] == f"/api/v1/batches/{body['batch_id']}"
    reasons = {f["file"]: f.get("reason") for f in body["files"]}
    assert "cannot be decoded" in reasons["broken.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    # chunk size 8 in the test settings: 10 images -> chunks of 8 and 2, ids only
    chunks = _queued_messages(db_settings)
    assert sorted(len(c) for c in chunks) == [2, 8]
    accepted_ids = {f["image_id"] for f in body["files"] if f["status"] == "accepted"}
    assert {i for c in chunks for i in c} == accepted_ids
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions() as s:
        states = dict(s.execute(select(Image.state, func.count()).group_by(Image.state)).all())
        assert states == {"queued": 10, "rejected": 2}
        assert s.scalar(select(func.count()).where(Image.enqueued_at.is_not(None))) == 10


def test_duplicates_in_a_batch_are_counted_not_stored_twice(client, db_settings, make_jpeg):
    same = make_jpeg(5)
    resp = client.post(
        "/api/v1/batches",
        data=_files(("a.jpg", same), ("b.jpg", same)),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    assert (resp.json["accepted"], resp.json["duplicate"]) == (1, 1)
    dup = next(f for f in resp.json["files"] if f["status"] == "duplicate")
    assert "a.jpg" in dup["reason"]
    assert len([p for p in db_settings.storage_dir.rglob("*") if p.is_file()]) == 1
    # the same bytes appended to the batch later are still a duplicate
    batch_id = resp.json["batch_id"]
    again = client.post(
        f"/api/v1/batches/{batch_id}/images",
        data=_files(("c.jpg", same), ("d.jpg", make_jpeg(6))),
        content_type="multipart/form-data",
    )
    assert again.status_code == 202
    assert (again.json["accepted"], again.json["duplicate"]) == (1, 1)


def test_zip_archive_entries_are_checked_one_by_one(client, make_jpeg):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("slide1/a.jpg", make_jpeg(1))
        zf.writestr("slide1/b.jpg", make_jpeg(2))
        zf.writestr("../escape.jpg", make_jpeg(3))
        zf.writestr("/abs.jpg", make_jpeg(4))
        zf.writestr("inner.zip", b"PK\x03\x04nested")
        zf.writestr("readme.txt", "hello")
    resp = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(buf.getvalue()), "s.zip")]},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    by_name = {f["file"]: f for f in resp.json["files"]}
    assert by_name["s.zip/slide1/a.jpg"]["status"] == "accepted"
    assert by_name["s.zip/slide1/b.jpg"]["status"] == "accepted"
    assert "'..'" in by_name["s.zip/../escape.jpg"]["reason"]
    assert "absolute" in by_name["s.zip//abs.jpg"]["reason"]
    assert "nested" in by_name["s.zip/inner.zip"]["reason"]
    assert by_name["s.zip/readme.txt"]["status"] == "rejected"


def test_nothing_usable_is_422_with_reasons_and_records_nothing(client, db_settings):
    resp = client.post(
        "/api/v1/batches",
        data=_files(("x.jpg", b""), ("y.png", b"<html>")),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 422
    reasons = [f["reason"] for f in resp.json["files"]]
    assert reasons[0] == "empty file" and "not an image" in reasons[1]
    with session_factory(engine_for(db_settings.database_url))() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0


def test_missing_files_field_is_400(client, make_jpeg):
    resp = client.post(
        "/api/v1/batches",
        data={"files": [(io.BytesIO(make_jpeg(1)), "a.jpg")]},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 400
    assert "images" in resp.json["error"] and "files" in resp.json["error"]


def test_request_over_the_total_limit_is_413(db_settings, make_jpeg):
    app = create_app(replace(db_settings, max_request_bytes=50_000))
    resp = token_client(app, db_settings.database_url).post(
        "/api/v1/batches",
        data=_files(*[(f"{i}.jpg", make_jpeg(i)) for i in range(10)]),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 413
    assert resp.is_json


def test_decompression_bomb_and_oversized_file_are_rejected(db_settings, make_jpeg):
    app = create_app(replace(db_settings, max_file_bytes=20_000, max_image_pixels=100 * 100))
    big_jpeg = make_jpeg(1, size=(400, 400), quality=100)
    assert len(big_jpeg) > 20_000
    from PIL import Image as P

    bomb = io.BytesIO()
    P.new("RGB", (300, 300)).save(bomb, "PNG")
    resp = token_client(app, db_settings.database_url).post(
        "/api/v1/batches",
        data=_files(
            ("big.jpg", big_jpeg),
            ("bomb.png", bomb.getvalue()),
            ("ok.jpg", make_jpeg(2, size=(90, 90))),
        ),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    reasons = {f["file"]: f.get("reason", "") for f in resp.json["files"]}
    assert "limit" in reasons["big.jpg"]
    assert "pixel limit" in reasons["bomb.png"]


def test_batch_status_results_csv_and_image_download(client, db_settings, make_jpeg):
    resp = client.post(
        "/api/v1/batches",
        data=_files(("a.jpg", make_jpeg(1)), ("b.txt", b"no")),
        content_type="multipart/form-data",
    )
    batch_id = resp.json["batch_id"]
    status = client.get(f"/api/v1/batches/{batch_id}").json
    assert status["total"] == 2 and status["pending"] == 1 and status["rejected"] == 1
    assert status["counts"][ImageState.QUEUED.value] == 1
    assert status["eta_seconds"] is None  # nothing scored yet: no rate to project
    rows = client.get(f"/api/v1/batches/{batch_id}/results").json["results"]
    assert [r["state"] for r in rows] == ["queued", "rejected"]
    assert rows[1]["error"]
    csv_resp = client.get(f"/api/v1/batches/{batch_id}/results?format=csv")
    assert csv_resp.mimetype == "text/csv"
    parsed = list(csv.DictReader(io.StringIO(csv_resp.get_data(as_text=True))))
    assert [r["file_name"] for r in parsed] == ["a.jpg", "b.txt"]
    image = client.get(f"/api/v1/images/{rows[0]['image_id']}")
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert image.data == make_jpeg(1)
    assert client.get(f"/api/v1/images/{rows[1]['image_id']}").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/batches/nope",
        "/api/v1/batches/nope/results",
        "/api/v1/images/999999",
        "/api/v1/images/abc",
    ],
)
def test_unknown_ids_are_json_404(client, path):
    resp = client.get(path)
    assert resp.status_code == 404 and resp.is_json and resp.json["error"]


def test_healthz_reports_database_and_broker(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok", "database": "ok", "broker": "ok", "storage": "ok"}


def test_healthz_is_503_naming_the_broker_when_it_is_down(db_settings):
    down = replace(db_settings, broker_url="redis://127.0.0.1:1/0")
    resp = create_app(down).test_client().get("/healthz")
    assert resp.status_code == 503
    assert resp.json["broker"] == "down" and resp.json["database"] == "ok"


def test_upload_while_broker_is_down_keeps_images_queued_for_reconciler(db_settings, make_jpeg):
    down = replace(db_settings, broker_url="redis://127.0.0.1:1/0")
    resp = token_client(create_app(down), db_settings.database_url).post(
        "/api/v1/batches",
        data=_files(("a.jpg", make_jpeg(1))),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    assert resp.json["accepted"] == 1 and resp.json["enqueued"] == 0
    assert "broker unavailable" in resp.json["note"]
    with session_factory(engine_for(db_settings.database_url))() as s:
        image = s.scalars(select(Image)).one()
        assert image.state == "queued" and image.enqueued_at is None


def test_results_are_paged_by_keyset_without_gaps_or_repeats(client, make_jpeg):
    resp = client.post(
        "/api/v1/batches",
        data=_files(*[(f"{i}.jpg", make_jpeg(i)) for i in range(5)]),
        content_type="multipart/form-data",
    )
    batch_id = resp.json["batch_id"]
    seen, after = [], 0
    while True:
        page = client.get(f"/api/v1/batches/{batch_id}/results?limit=2&after_id={after}").json
        seen += [r["file_name"] for r in page["results"]]
        if "next_after_id" not in page:
            break
        after = page["next_after_id"]
    assert seen == [f"{i}.jpg" for i in range(5)]


def test_a_part_of_only_rejected_files_is_still_recorded_in_its_batch(client, make_jpeg):
    first = client.post(
        "/api/v1/batches", data=_files(("a.jpg", make_jpeg(1))), content_type="multipart/form-data"
    )
    batch_id = first.json["batch_id"]
    part = client.post(
        f"/api/v1/batches/{batch_id}/images",
        data=_files(("broken.jpg", make_jpeg(2)[:300]), ("notes.txt", b"x")),
        content_type="multipart/form-data",
    )
    assert part.status_code == 202
    assert (part.json["accepted"], part.json["rejected"]) == (0, 2)
    rows = client.get(f"/api/v1/batches/{batch_id}/results").json["results"]
    reasons = {r["file_name"]: r["error"] for r in rows if r["state"] == "rejected"}
    assert set(reasons) == {"broken.jpg", "notes.txt"} and all(reasons.values())
