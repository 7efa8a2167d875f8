"""Stalled work is visible: a batch with nobody consuming its queue says so, and /readyz is 503
while /healthz (liveness) stays 200."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from db.models import Image
from db.session import engine_for, session_factory
from db.workers import Beat, record_beat
from tests.conftest import smear_like_jpeg


def _upload(client) -> str:  # type: ignore[no-untyped-def]
    files = [(io.BytesIO(smear_like_jpeg(i)), f"s{i}.jpg") for i in range(3)]
    resp = client.post("/api/v1/batches", data={"images": files})
    assert resp.status_code == 202, resp.json
    return resp.json["batch_id"]


def _beat(database_url: str, pid: int, queues: list[str], last_task_ago_s: float | None) -> None:
    now = datetime.now(UTC)
    last_task = None if last_task_ago_s is None else now - timedelta(seconds=last_task_ago_s)
    record_beat(
        session_factory(engine_for(database_url)),
        Beat(
            node=f"w-{pid}@lab",
            host="lab",
            pid=pid,
            queues=queues,
            concurrency=1,
            model_name=None,
            model_version=None,
            started_at=now - timedelta(hours=1),
            last_task_at=last_task,
            images_last_minute=0,
        ),
    )


def test_a_batch_with_no_worker_says_it_is_stalled_instead_of_estimating(client, db_settings):
    batch_id = _upload(client)
    batch = client.get(f"/api/v1/batches/{batch_id}").json
    assert batch["pending"] == 3 and batch["eta_seconds"] is None
    assert batch["stalled"] is True
    assert "No worker is taking images from queue cpu" in batch["stall_message"]

    # A live worker that takes work: the batch is merely waiting, not stalled.
    _beat(db_settings.database_url, 1, ["cpu"], last_task_ago_s=2)
    batch = client.get(f"/api/v1/batches/{batch_id}").json
    assert batch["stalled"] is False and batch["stall_message"] is None


def test_live_workers_that_take_nothing_for_too_long_are_a_stall(client, db_settings):
    batch_id = _upload(client)
    _beat(db_settings.database_url, 1, ["cpu"], last_task_ago_s=db_settings.stall_after_s + 60)
    # Just queued: an idle worker gets its time to take the batch.
    assert client.get(f"/api/v1/batches/{batch_id}").json["stalled"] is False
    waited = datetime.now(UTC) - timedelta(seconds=db_settings.stall_after_s + 30)
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        s.execute(update(Image).values(updated_at=waited))
    batch = client.get(f"/api/v1/batches/{batch_id}").json
    assert batch["stalled"] is True
    assert "Workers are running but none has taken an image" in batch["stall_message"]


def test_readiness_reports_worker_presence_per_queue_and_the_oldest_queued_age(
    app, client, db_settings
):
    anonymous = app.test_client()
    _upload(client)
    ready = anonymous.get("/readyz")
    assert ready.status_code == 503
    body = ready.json
    assert body["status"] == "not_ready"
    assert body["queues"]["cpu"]["processes"] == 0
    assert "no live worker on queue cpu" in body["reasons"]
    assert "no live worker on queue reconcile" in body["reasons"]
    assert body["oldest_queued_age_s"] is not None and body["oldest_queued_age_s"] >= 0
    assert body["stalled"] and "No worker" in body["stalled"]
    # Liveness is about this process and its services, not the workers.
    assert anonymous.get("/healthz").status_code == 200

    _beat(db_settings.database_url, 1, ["priority", "cpu"], last_task_ago_s=1)
    _beat(db_settings.database_url, 2, ["reconcile"], last_task_ago_s=None)
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["status"] == "ready" and ready.json["reasons"] == []
    cpu = ready.json["queues"]["cpu"]
    assert (cpu["processes"], cpu["hosts"]) == (1, 1)


def test_a_finished_batch_is_never_stalled(client, db_settings):
    from tests.reviewdata import seed_scored

    batch_id, _ = seed_scored(db_settings.database_url, [0.9, 0.1])
    batch = client.get(f"/api/v1/batches/{batch_id}").json
    assert batch["pending"] == 0 and batch["stalled"] is False


def test_admins_see_every_worker_process_with_stale_ones_marked(app, db_settings):
    from tests.conftest import token_client

    url = db_settings.database_url
    _beat(url, 1, ["cpu"], last_task_ago_s=3)
    old = datetime.now(UTC) - timedelta(seconds=db_settings.worker_stale_s + 30)
    record_beat(
        session_factory(engine_for(url)),
        Beat("cpu-2@lab", "lab", 2, ["cpu"], 1, None, None, old, None, 0),
        now=old,
    )
    admin = token_client(app, url, "boss", "admin", global_admin=True)
    body = admin.get("/api/v1/workers").json
    assert [(w["pid"], w["stale"]) for w in body["workers"]] == [(1, False), (2, True)]
    assert body["queues"]["cpu"]["processes"] == 1
    assert body["queues"]["reconcile"]["processes"] == 0
    uploader = token_client(app, url, "lab", "uploader")
    assert uploader.get("/api/v1/workers").status_code == 403
    page = admin.get("/admin/workers")
    assert page.status_code == 200 and b'data-api="/api/v1/workers"' in page.data


def test_probes_answer_a_wrong_method_in_json_with_allow(app):
    for path in ("/readyz", "/metrics"):
        resp = app.test_client().post(path, headers={"Accept": "text/html"})
        assert resp.status_code == 405 and resp.is_json, path
        assert "GET" in resp.headers["Allow"], path
