"""Structured logs: LEUKOSCREEN_LOG_FORMAT=json writes one JSON object per line, and the
request, batch and images of an upload follow its work into the tasks it enqueues."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from api import create_app
from db.models import Batch, Image
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from leukoscreen import logs
from tests.conftest import smear_like_jpeg, token_client
from worker.reconcile import reconcile


class RecordingCelery:
    """Stands in for the broker: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_task(self, name: str, args: list, **options) -> None:  # type: ignore[no-untyped-def]
        self.sent.append({"name": name, "args": args, **options})


@pytest.fixture
def json_lines():  # type: ignore[no-untyped-def]
    """The JSON format configured for this test; returns a function parsing the lines so far."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("json")
    buffer = io.StringIO()
    (handler,) = root.handlers
    handler.setStream(buffer)  # type: ignore[attr-defined]

    def read() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield read
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_every_line_is_one_json_object_with_level_time_logger_and_context(json_lines):
    log = logging.getLogger("leukoscreen.test")
    log.info("before")
    with logs.bound(request_id="r-1", batch_id="b-1", image_ids=[3, 4]):
        log.warning("inside %s", "a batch")
    lines = json_lines()
    assert [line["message"] for line in lines] == ["before", "inside a batch"]
    first, second = lines
    assert first["level"] == "INFO" and first["logger"] == "leukoscreen.test"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert "batch_id" not in first
    assert (second["level"], second["request_id"], second["batch_id"]) == ("WARNING", "r-1", "b-1")
    assert second["image_ids"] == [3, 4]


def test_text_lines_carry_the_context_as_key_value():
    formatter = logs.TextFormatter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "scored", None, None)
    record.batch_id, record.request_id = "b-9", "r-9"
    line = formatter.format(record)
    assert line.endswith("INFO x: scored [request_id=r-9 batch_id=b-9]")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text or json"):
        logs.dict_config("xml")


def test_a_long_id_list_is_logged_as_its_range():
    assert logs.image_ids([5, 6]) == {"image_ids": [5, 6]}
    many = list(range(1, 1001))
    assert logs.image_ids(many) == {"image_id_range": [1, 1000], "images": 1000}


def test_an_upload_carries_its_request_and_batch_into_the_task_headers(db_settings, json_lines):
    celery = RecordingCelery()
    app = create_app(db_settings, celery=celery)
    client = token_client(app, db_settings.database_url)
    files = [(io.BytesIO(smear_like_jpeg(i)), f"s{i}.jpg") for i in range(3)]
    resp = client.post(
        "/api/v1/batches", data={"images": files}, headers={"X-Request-ID": "scanner-7.42"}
    )
    assert resp.status_code == 202
    assert resp.headers["X-Request-ID"] == "scanner-7.42"
    batch_id = resp.json["batch_id"]
    (task,) = celery.sent
    assert task["headers"] == {
        "leukoscreen_request_id": "scanner-7.42",
        "leukoscreen_batch_id": batch_id,
    }
    recorded = [line for line in json_lines() if line["logger"] == "api.batches"]
    assert recorded and recorded[-1]["batch_id"] == batch_id
    assert recorded[-1]["request_id"] == "scanner-7.42"
    assert recorded[-1]["image_ids"] == task["args"][0]


def test_a_request_id_that_is_not_an_id_is_replaced(app):
    resp = app.test_client().get("/healthz", headers={"X-Request-ID": 'x" {injected}'})
    assert resp.headers["X-Request-ID"] != 'x" {injected}'
    assert len(resp.headers["X-Request-ID"]) == 32


def test_the_reconciler_names_the_batch_it_re_enqueues(db_settings, json_lines):
    settings = replace(db_settings, stale_after_s=60)
    sessions = session_factory(engine_for(settings.database_url))
    old = datetime.now(UTC) - timedelta(hours=1)
    with sessions.begin() as s:
        batches = [
            Batch(name=f"b{i}", submitted_by="t", laboratory_id=DEFAULT_LAB_ID) for i in range(2)
        ]
        s.add_all(
            Image(
                batch=b,
                sha256="a" * 64,
                original_name="x.jpg",
                storage_key="a" * 64,
                size_bytes=1,
                state="queued",
                enqueued_at=old,
                created_at=old,
            )
            for b in batches
        )
        s.flush()
        batch_ids = {b.id for b in batches}
    celery = RecordingCelery()
    assert reconcile(celery, sessions, settings).enqueued == 2  # type: ignore[arg-type]
    assert {t["headers"]["leukoscreen_batch_id"] for t in celery.sent} == batch_ids
    lines = [line for line in json_lines() if line["logger"] == "worker.reconcile"]
    assert {line["batch_id"] for line in lines} == batch_ids
