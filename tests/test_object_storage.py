"""Originals in an S3-compatible bucket (a local moto server, see ``s3_bucket``): an upload
through the API lands in the bucket, downloads and /healthz read it, a worker scores from it
and retention removes the object; a bucket that refuses writes is a plain 503/507."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import replace

import pytest
import requests
from sqlalchemy import select

import worker.tasks as tasks
from api import create_app
from bench.processes import ProcessGroup, project_env
from db import migrate
from db.models import Batch, Image, Result
from db.retention import purge_old_images
from db.session import engine_for, session_factory
from leukoscreen.config import Settings, load_settings
from leukoscreen.objectstore import S3Store
from leukoscreen.storage import open_store
from tests.conftest import bucket_keys, create_account, smear_like_jpeg, token_client
from tests.test_retention import _age
from tests.test_scoring import FakeScorer
from tests.test_storage import refusing
from tests.test_tasks import _Runtime
from worker.runtime import WorkerRuntime
from worker.scoring import register_model_version


@pytest.fixture
def s3_settings(db_settings: Settings, s3_bucket: dict[str, str]) -> Settings:
    return replace(db_settings, **s3_bucket)


def _upload(client, blobs: list[bytes]) -> list[int]:  # type: ignore[no-untyped-def]
    files = [(io.BytesIO(b), f"{i}.jpg") for i, b in enumerate(blobs)]
    resp = client.post("/api/v1/batches", data={"images": files})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return [f["image_id"] for f in resp.json["files"]]


def _score_in_worker(settings: Settings, image_ids: list[int], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The Celery scoring task, run in this process with the store a worker host opens."""
    sessions = session_factory(engine_for(settings.database_url))
    scorer = FakeScorer()
    store = WorkerRuntime(settings).store
    runtime = _Runtime(sessions, settings, store, scorer, register_model_version(sessions, scorer))
    monkeypatch.setattr(tasks, "runtime", lambda: runtime)
    tasks.score_images.apply(args=[image_ids])


def test_an_upload_is_stored_in_the_bucket_and_served_from_it(s3_settings):
    client = token_client(create_app(s3_settings), s3_settings.database_url)
    blob = smear_like_jpeg(5)
    (image_id,) = _upload(client, [blob])

    with session_factory(engine_for(s3_settings.database_url))() as s:
        key = s.scalar(select(Image.storage_key).where(Image.id == image_id))
    assert bucket_keys(s3_settings) == [f"originals/{key[:2]}/{key[2:4]}/{key}"]
    # Nothing but (empty) staging on the API host's disk.
    assert [p for p in s3_settings.storage_dir.rglob("*") if p.is_file()] == []
    assert client.get(f"/api/v1/images/{image_id}").data == blob
    thumbnail = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"
    assert client.get("/healthz").json["storage"] == "ok"


def test_a_worker_scores_from_the_bucket_and_retention_removes_the_objects(
    s3_settings, monkeypatch
):
    client = token_client(create_app(s3_settings), s3_settings.database_url)
    ids = _upload(client, [smear_like_jpeg(6), smear_like_jpeg(7)])
    assert isinstance(WorkerRuntime(s3_settings).store, S3Store)

    _score_in_worker(s3_settings, ids, monkeypatch)

    sessions = session_factory(engine_for(s3_settings.database_url))
    with sessions() as s:
        assert set(s.scalars(select(Image.state).where(Image.id.in_(ids)))) == {"scored"}
        assert len(s.scalars(select(Result.id)).all()) == 2
    _age(s3_settings.database_url, ids, days=40)
    report = purge_old_images(sessions, open_store(s3_settings), 30, None)
    assert (report.images, report.files_removed) == (2, 2)
    assert bucket_keys(s3_settings) == []
    assert client.get(f"/api/v1/images/{ids[0]}").status_code == 410


@pytest.mark.parametrize("db_settings", ["sqlite"], indirect=True)
def test_a_bucket_that_cannot_be_read_leaves_the_chunk_to_retry_not_the_images_failed(
    s3_settings, monkeypatch
):
    client = token_client(create_app(s3_settings), s3_settings.database_url)
    ids = _upload(client, [smear_like_jpeg(8)])
    calls = []
    real = tasks.score_chunk
    monkeypatch.setattr(tasks, "score_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    vanished = replace(s3_settings, storage_url="s3://no-such-bucket/originals")

    _score_in_worker(vanished, ids, monkeypatch)

    # Every retry found the store down; only after the last one is the image failed, with
    # the store's reason (a missing file would have failed it at once).
    assert len(calls) == tasks.MAX_RETRIES + 1
    with session_factory(engine_for(s3_settings.database_url))() as s:
        image = s.get(Image, ids[0])
        assert image is not None and image.state == "failed"
        assert "the bucket does not exist" in (image.error or "")


@pytest.mark.parametrize("db_settings", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("code", "status", "answer"), [("XMinioStorageFull", 507, 507), ("AccessDenied", 403, 503)]
)
def test_an_upload_to_a_bucket_that_refuses_writes_is_a_plain_503_or_507(
    s3_settings, code, status, answer
):
    app = create_app(s3_settings)
    refusing(app.extensions["leukoscreen"]["store"], code, status)
    client = token_client(app, s3_settings.database_url)

    resp = client.post(
        "/api/v1/batches", data={"images": [(io.BytesIO(smear_like_jpeg(9)), "a.jpg")]}
    )

    assert resp.status_code == answer
    assert resp.json["error"].startswith("image storage cannot be written: ")
    assert code in resp.json["error"] and "Traceback" not in resp.get_data(as_text=True)
    with session_factory(engine_for(s3_settings.database_url))() as s:
        assert s.scalars(select(Batch.id)).all() == []
    assert client.get("/healthz").json["storage"] == "down"
    assert bucket_keys(s3_settings) == []


@pytest.mark.parametrize("db_settings", ["sqlite"], indirect=True)
def test_a_download_from_the_bucket_carries_its_content_address_as_etag(s3_settings):
    client = token_client(create_app(s3_settings), s3_settings.database_url)
    (image_id,) = _upload(client, [smear_like_jpeg(10)])
    first = client.get(f"/api/v1/images/{image_id}")
    assert first.headers["ETag"].strip('"') == hashlib.sha256(first.data).hexdigest()
    again = client.get(
        f"/api/v1/images/{image_id}", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_an_api_host_and_a_worker_host_that_share_no_volume_score_through_the_bucket(
    tmp_path, model_path, s3_bucket
):
    """Real processes: gunicorn and a Celery worker, each with a var folder of its own; only
    the database, the broker folder and the bucket are common."""
    shared = tmp_path / "shared"
    shared.mkdir()
    database_url = f"sqlite:///{shared / 'leukoscreen.db'}"
    env = project_env(
        DATABASE_URL=database_url,
        LEUKOSCREEN_BROKER_DIR=str(shared / "broker"),
        LEUKOSCREEN_MODEL_PATH=str(model_path),
        LEUKOSCREEN_CHUNK_SIZE="8",
        LEUKOSCREEN_BATCH_SIZE="8",
        LEUKOSCREEN_STORAGE=s3_bucket["storage_url"],
        LEUKOSCREEN_S3_ENDPOINT_URL=s3_bucket["s3_endpoint_url"],
        LEUKOSCREEN_S3_REGION=s3_bucket["s3_region"],
    )
    migrate.upgrade(database_url)
    auth = {"Authorization": f"Bearer {create_account(database_url, 'lab', 'uploader')}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    api_host = ProcessGroup({**env, "LEUKOSCREEN_VAR_DIR": str(tmp_path / "api")}, logs)
    worker_host = ProcessGroup({**env, "LEUKOSCREEN_VAR_DIR": str(tmp_path / "worker")}, logs)
    try:
        base = api_host.start_api(workers=1)
        worker_host.start("worker", "--concurrency", "1", name="worker")
        files = [("images", (f"{i}.jpg", smear_like_jpeg(40 + i))) for i in range(5)]
        sent = requests.post(f"{base}/api/v1/batches", files=files, headers=auth, timeout=60)
        assert sent.status_code == 202, sent.text
        batch = f"{base}/api/v1/batches/{sent.json()['batch_id']}"
        deadline = time.monotonic() + 240
        while (status := requests.get(batch, headers=auth, timeout=10).json())["state"] != (
            "complete"
        ):
            assert time.monotonic() < deadline, api_host.logs()
            time.sleep(1)
    finally:
        worker_host.stop_all()
        api_host.stop_all()
    assert status["done"] == status["total"] == 5 and status["failed"] == 0, worker_host.logs()
    # The bucket holds the five originals and the heatmaps the worker made after scoring (at
    # most one per image; the worker may have been stopped before it recorded the last one).
    with session_factory(engine_for(database_url))() as s:
        originals = set(s.scalars(select(Image.storage_key)))
        heatmaps = set(s.scalars(select(Result.heatmap_key).where(Result.heatmap_key.is_not(None))))
    bucket = set(bucket_keys(replace(load_settings(), **s3_bucket)))
    assert len(originals) == 5
    assert {f"originals/{k[:2]}/{k[2:4]}/{k}" for k in originals | heatmaps} <= bucket
    assert len(bucket) <= 2 * len(originals)
    # Neither host kept an original on its own disk.
    assert [p.name for p in tmp_path.glob("*/images/**/*") if p.is_file()] == []
