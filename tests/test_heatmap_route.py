"""``GET /api/v1/images/<id>/heatmap``: the explanation overlay of the image's newest result,
404 with a plain message until it is made, its laboratory's only, 410 once purged; and the
``heatmap_url`` of the image JSON that points at it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from api import create_app
from db.accounts import create_laboratory
from db.models import Image
from db.session import engine_for, session_factory
from leukoscreen.storage import ContentStore
from tests.conftest import smear_like_jpeg, token_client
from tests.reviewdata import give_heatmap, seed_scored


def test_the_heatmap_route_serves_the_png_or_says_there_is_none_yet(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    reviewer = token_client(app, url, "dr.path", "reviewer")
    batch_id, (flagged, cleared) = seed_scored(
        url,
        [0.9, 0.1],
        storage_dir=db_settings.storage_dir,
        blobs=[smear_like_jpeg(700), smear_like_jpeg(701)],
    )

    missing = reviewer.get(f"/api/v1/images/{flagged}/heatmap")
    assert missing.status_code == 404 and missing.is_json
    assert "no heatmap for image" in missing.json["error"] and "yet" in missing.json["error"]
    item = reviewer.get(f"/api/v1/review/items/{flagged}").json
    assert item["heatmap_url"] is None

    key = give_heatmap(url, db_settings.storage_dir, flagged)
    item = reviewer.get(f"/api/v1/review/items/{flagged}").json
    assert item["heatmap_url"] == f"/api/v1/images/{flagged}/heatmap?v={key[:16]}"
    got = reviewer.get(item["heatmap_url"])
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert got.data == ContentStore(db_settings.storage_dir).read(key)
    assert "private" in got.headers["Cache-Control"]
    listed = reviewer.get(f"/api/v1/batches/{batch_id}/images").json["items"]
    assert {i["image_id"]: i["heatmap_url"] for i in listed} == {
        flagged: item["heatmap_url"],
        cleared: None,
    }
    assert reviewer.get(f"/api/v1/images/{cleared}/heatmap").status_code == 404

    # A duplicate shows its twin's heatmap.
    with session_factory(engine_for(url)).begin() as s:
        twin = s.get(Image, flagged)
        copy = Image(
            batch_id=twin.batch_id,
            sha256=twin.sha256,
            original_name="copy.jpg",
            storage_key=twin.storage_key,
            size_bytes=1,
            state="duplicate",
            duplicate_of_id=flagged,
        )
        s.add(copy)
        s.flush()
        copy_id = copy.id
    assert reviewer.get(f"/api/v1/images/{copy_id}/heatmap").data == got.data

    # Another laboratory: the words of an id that does not exist.
    with session_factory(engine_for(url)).begin() as s:
        lab_b = create_laboratory(s, "lab-b", None)
        s.flush()
        lab_b_id = lab_b.id
    _, (theirs,) = seed_scored(url, [0.9], laboratory_id=lab_b_id)
    other = reviewer.get(f"/api/v1/images/{theirs}/heatmap")
    nowhere = reviewer.get("/api/v1/images/999999/heatmap")
    assert other.status_code == nowhere.status_code == 404
    assert other.json["error"].replace(str(theirs), "N") == nowhere.json["error"].replace(
        "999999", "N"
    )

    # Purged: gone on purpose, like the image itself.
    with session_factory(engine_for(url)).begin() as s:
        s.execute(update(Image).where(Image.id == flagged).values(purged_at=datetime.now(UTC)))
    purged = reviewer.get(f"/api/v1/images/{flagged}/heatmap")
    assert purged.status_code == 410 and "purged" in purged.json["error"]
