"""Image metadata (EXIF, PNG text, TIFF tags) never reaches a page or JSON answer, and with
LEUKOSCREEN_STRIP_METADATA it is not even stored."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import PngImagePlugin
from sqlalchemy import select

from api import create_app
from api.deidentify import strip_jpeg_segments
from db.models import Image, ImageState, ModelVersion, Result
from db.session import engine_for, session_factory
from leukoscreen.storage import ContentStore
from model.preprocess import load_rgb
from tests.conftest import smear_like_jpeg, token_client

SECRET = "PATIENT Jane Doe MRN-4711"
EXIF_DESCRIPTION, EXIF_ARTIST, EXIF_SOFTWARE = 0x010E, 0x013B, 0x0131


def _pixels(size: tuple[int, int] = (48, 40)) -> PILImage.Image:
    rng = np.random.default_rng(7)
    return PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def jpeg_with_exif() -> bytes:
    exif = PILImage.Exif()
    exif[EXIF_DESCRIPTION] = SECRET
    exif[EXIF_ARTIST] = SECRET
    exif[EXIF_SOFTWARE] = "Scanner " + SECRET
    out = io.BytesIO()
    PILImage.open(io.BytesIO(smear_like_jpeg(3))).save(
        out, format="JPEG", quality=90, exif=exif, comment=SECRET.encode()
    )
    data = out.getvalue()
    assert SECRET.encode() in data
    return data


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)
    info.add_text("Author", SECRET)
    out = io.BytesIO()
    _pixels().save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def tiff_with_tags() -> bytes:
    out = io.BytesIO()
    _pixels().save(out, format="TIFF", tiffinfo={270: SECRET, 315: SECRET})
    data = out.getvalue()
    assert SECRET.encode() in data
    return data


SPECIMEN = "ACC-DEID-1"
FILES = {"exif.jpg": jpeg_with_exif, "text.png": png_with_text, "tags.tiff": tiff_with_tags}


def _upload(client, names=FILES):  # type: ignore[no-untyped-def]
    # Filed under one specimen, so that the specimen routes answer too.
    data = {
        "images": [(io.BytesIO(FILES[n]()), n) for n in names],
        "name": "deid",
        "specimen_id": SPECIMEN,
    }
    resp = client.post("/api/v1/batches", data=data)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.json


def _score_all(database_url: str, batch_id: str) -> list[int]:
    """Results written directly (no worker): one flagged image, the others cleared."""
    with session_factory(engine_for(database_url)).begin() as s:
        version = ModelVersion(sha256="d" * 64, name="lenet_lld-test", threshold=0.5)
        s.add(version)
        images = s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.id))
        ids = []
        for i, image in enumerate(images):
            image.state = ImageState.SCORED.value
            p = 0.9 if i == 0 else 0.1
            s.add(
                Result(image=image, batch_id=batch_id, model_version=version, p_leukemia=p,
                       flagged=p >= 0.5, threshold=0.5, route="flagged" if p >= 0.5 else "cleared")
            )  # fmt: skip
            ids.append(image.id)
        return ids


def _every_get_answer(app, client, batch_id: str, image_id: int, with_image: bool):  # type: ignore[no-untyped-def]
    """(path, body) for every GET route of the app with this batch's ids filled in."""
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.rule.startswith("/static/"):
            continue
        if rule.endpoint == "batches.get_image" and not with_image:
            continue  # the stored original itself, as uploaded
        path = re.sub(r"<int:\w+>", str(image_id), rule.rule).replace("<specimen_id>", SPECIMEN)
        path = re.sub(r"<\w+>", batch_id, path)
        queries = {
            "batches.batch_results": ["", "?format=csv", "?format=json"],
            "reviews.queue": ["", f"?batch={batch_id}", "?state=unreviewed&min_p=0"],
            "reviews.explore_threshold": ["?t=0.05"],
            "reviews.qc_sample": ["?n=10"],
        }.get(rule.endpoint, [""])
        # /readyz is 503 without workers, and its answer is checked all the same.
        # An unsigned specimen has no FHIR report yet (409), there is no webhook (404) and no
        # worker made a heatmap here (404): those refusals are checked all the same.
        answers = {
            "health.readyz": (200, 302, 503),
            "fhir.specimen_report": (409,),
            "webhooks.webhook_deliveries": (404,),
            "batches.get_heatmap": (404,),
        }.get(rule.endpoint, (200, 302))
        for query in queries:
            resp = client.get(path + query)
            assert resp.status_code in answers, (path + query, resp.status_code)
            yield path + query, resp.get_data()


@pytest.mark.parametrize("strip", [False, True], ids=["stored-as-sent", "stripped"])
def test_metadata_text_never_appears_in_any_page_or_json_answer(db_settings, strip):
    settings = replace(db_settings, strip_metadata=strip)
    app = create_app(settings)
    # A global admin: every route answers, those spanning every laboratory included.
    admin = token_client(app, settings.database_url, "ada", "admin", global_admin=True)
    body = _upload(admin)
    assert body["accepted"] == len(FILES)
    batch_id = body["batch_id"]
    ids = _score_all(settings.database_url, batch_id)
    checked = 0
    for image_id in ids:
        for path, content in _every_get_answer(app, admin, batch_id, image_id, with_image=strip):
            assert SECRET.encode() not in content, path
            assert b"Jane Doe" not in content, path
            checked += 1
    assert checked > 3 * 15


def _stored(settings, upload_name: str) -> tuple[Image, bytes]:  # type: ignore[no-untyped-def]
    with session_factory(engine_for(settings.database_url))() as s:
        image = s.scalars(select(Image).where(Image.original_name == upload_name)).one()
        s.expunge(image)
    return image, ContentStore(settings.storage_dir).read(image.storage_key or "")


def test_stripping_stores_originals_without_metadata_and_records_the_uploads_sha256(settings):
    from db import migrate

    migrate.upgrade(settings.database_url)
    settings = replace(settings, strip_metadata=True)
    app = create_app(settings)
    client = token_client(app, settings.database_url)
    _upload(client)
    for name, make in FILES.items():
        sent = make()
        image, stored = _stored(settings, name)
        assert image.sha256 == hashlib.sha256(sent).hexdigest()
        assert image.storage_key == hashlib.sha256(stored).hexdigest() != image.sha256
        assert SECRET.encode() not in stored and b"Jane" not in stored
        with PILImage.open(io.BytesIO(stored)) as clean, PILImage.open(io.BytesIO(sent)) as orig:
            assert clean.format == orig.format
            if clean.format != "TIFF":  # a TIFF's own structure tags read as EXIF
                assert not clean.getexif()
            assert not {"exif", "comment", "Comment", "Author", "icc_profile"} & set(clean.info)
            assert not getattr(clean, "text", {})
            if clean.format == "TIFF":
                assert 270 not in clean.tag_v2 and 315 not in clean.tag_v2
            # The pixels are those of the upload (JPEG: scan data copied, not re-encoded).
            assert np.array_equal(np.asarray(clean.convert("RGB")), np.asarray(orig.convert("RGB")))
        # Workers read by storage_key, and the API serves the stripped copy.
        assert load_rgb(ContentStore(settings.storage_dir).read(image.storage_key)).size
        served = client.get(f"/api/v1/images/{image.id}")
        assert served.status_code == 200 and served.get_data() == stored


def test_duplicates_are_found_by_the_received_bytes_when_stripping(settings):
    from db import migrate

    migrate.upgrade(settings.database_url)
    settings = replace(settings, strip_metadata=True)
    app = create_app(settings)
    client = token_client(app, settings.database_url)
    data = jpeg_with_exif()
    first = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(data), "a.jpg"), (io.BytesIO(data), "b.jpg")]},
    ).json
    assert (first["accepted"], first["duplicate"]) == (1, 1)
    again = client.post(
        f"/api/v1/batches/{first['batch_id']}/images",
        data={"images": [(io.BytesIO(data), "c.jpg")]},
    )
    assert again.status_code == 202 and again.json["files"][0]["status"] == "duplicate"
    assert (again.json["accepted"], again.json["duplicate"]) == (0, 1)


def test_stripping_is_off_by_default_and_read_from_the_environment(monkeypatch):
    from leukoscreen.config import load_settings

    monkeypatch.delenv("LEUKOSCREEN_STRIP_METADATA", raising=False)
    assert load_settings().strip_metadata is False
    monkeypatch.setenv("LEUKOSCREEN_STRIP_METADATA", "1")
    assert load_settings().strip_metadata is True


def test_jpeg_segment_stripping_keeps_the_scan_data_byte_for_byte():
    sent = jpeg_with_exif()
    clean = strip_jpeg_segments(sent)
    assert SECRET.encode() not in clean
    sos = sent.index(b"\xff\xda")
    assert clean.endswith(sent[sos : sent.rindex(b"\xff\xd9") + 2])
    # Trailing bytes after the end of the image (where some tools hide data) are dropped.
    assert strip_jpeg_segments(sent + SECRET.encode()) == clean


def test_an_exif_rotated_jpeg_is_stored_upright_when_stripping():
    from api.deidentify import strip_metadata

    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[EXIF_ARTIST] = SECRET
    out = io.BytesIO()
    _pixels((60, 30)).save(out, format="JPEG", exif=exif)
    clean = strip_metadata(out.getvalue(), "JPEG")
    assert SECRET.encode() not in clean
    assert load_rgb(clean).size == load_rgb(out.getvalue()).size == (30, 60)
