"""Idempotent intake: a retried upload with the same Idempotency-Key makes no second batch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from api import create_app, idempotency
from db import migrate
from db.models import Batch, Image
from db.session import engine_for, session_factory
from leukoscreen.submit import upload_part
from tests.conftest import token_client


@pytest.fixture
def client(db_settings):
    """An uploader's token client; the app is ``client.application``."""
    migrate.upgrade(db_settings.database_url)
    return token_client(create_app(db_settings), db_settings.database_url)


def _counts(database_url: str) -> tuple[int, int]:
    with session_factory(engine_for(database_url))() as session:
        batches = session.scalar(select(func.count()).select_from(Batch))
        images = session.scalar(select(func.count()).select_from(Image))
    return batches, images


def _post(client, path: str, key: str | None, images: list[bytes]):  # type: ignore[no-untyped-def]
    return client.post(
        path,
        data={"images": [(io.BytesIO(b), f"{i}.jpg") for i, b in enumerate(images)]},
        content_type="multipart/form-data",
        headers={"Idempotency-Key": key} if key else {},
    )


def test_a_retried_new_batch_returns_the_first_answer(client, db_settings, make_jpeg):
    images = [make_jpeg(i) for i in range(3)]
    first = _post(client, "/api/v1/batches", "part-1", images)
    again = _post(client, "/api/v1/batches", "part-1", images)
    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert _counts(db_settings.database_url) == (1, 3)
    other = _post(client, "/api/v1/batches", "part-2", images)
    assert other.json["batch_id"] != first.json["batch_id"]
    assert _counts(db_settings.database_url) == (2, 6)


def test_a_retried_part_is_added_once(client, db_settings, make_jpeg):
    batch_id = _post(client, "/api/v1/batches", None, [make_jpeg(1)]).json["batch_id"]
    path = f"/api/v1/batches/{batch_id}/images"
    first = _post(client, path, "p2", [make_jpeg(2), make_jpeg(3)])
    again = _post(client, path, "p2", [make_jpeg(2), make_jpeg(3)])
    assert again.json == first.json and first.json["accepted"] == 2
    assert _counts(db_settings.database_url) == (1, 3)


def test_a_key_is_per_user_and_per_request(client, db_settings, make_jpeg):
    first = _post(client, "/api/v1/batches", "k", [make_jpeg(1)])
    someone_else = token_client(client.application, db_settings.database_url, "other-lab")
    assert (
        _post(someone_else, "/api/v1/batches", "k", [make_jpeg(1)]).json["batch_id"]
        != first.json["batch_id"]
    )
    elsewhere = _post(client, f"/api/v1/batches/{first.json['batch_id']}/images", "k", [b"x"])
    assert elsewhere.status_code == 409 and "Idempotency-Key" in elsewhere.json["error"]
    other_files = _post(client, "/api/v1/batches", "k", [make_jpeg(2), make_jpeg(3)])
    assert other_files.status_code == 409
    empty = client.post(
        "/api/v1/batches", content_type="multipart/form-data", headers={"Idempotency-Key": "k"}
    )
    assert empty.status_code == 400
    assert _post(client, "/api/v1/batches", "\x01bad", [make_jpeg(1)]).status_code == 400


def test_two_racing_copies_record_one_batch(client, db_settings, make_jpeg, monkeypatch):
    """The second copy passes the lookup before the first commits: the unique key stops it."""
    first = _post(client, "/api/v1/batches", "race", [make_jpeg(1)])
    real = idempotency.first_answer
    calls: list[str] = []

    def lookup_misses_once(key: str, sent: str):  # type: ignore[no-untyped-def]
        calls.append(key)
        return None if len(calls) == 1 else real(key, sent)

    monkeypatch.setattr(idempotency, "first_answer", lookup_misses_once)
    again = _post(client, "/api/v1/batches", "race", [make_jpeg(1)])
    assert again.status_code == 202 and again.json == first.json
    assert _counts(db_settings.database_url) == (1, 1)


class _LosesFirstAnswer:
    """A requests session over the Flask test client whose first answer never arrives."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self.client, self.calls = client, []

    def post(self, url, files, data, headers, timeout):  # type: ignore[no-untyped-def]
        self.calls.append(dict(headers))
        form = {**data, "images": [(fh, label) for _, (label, fh, _) in files]}
        path = url.removeprefix("http://api")
        response = self.client.post(
            path, data=form, content_type="multipart/form-data", headers=headers
        )
        if len(self.calls) == 1:  # committed, then the connection broke
            raise requests.ConnectionError("connection reset by peer")
        wrapped = requests.Response()
        wrapped.status_code, wrapped._content = response.status_code, response.data
        return wrapped


def test_submit_retries_a_part_with_the_same_key(client, db_settings, make_jpeg, tmp_path):
    part: list[tuple[Path, str]] = []
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(make_jpeg(i))
        part.append((tmp_path / f"{i}.jpg", f"{i}.jpg"))
    http = _LosesFirstAnswer(client)
    body = upload_part(http, "http://api", None, part, None, delays=(0.0,))  # type: ignore[arg-type]
    assert body["accepted"] == 3
    keys = {c["Idempotency-Key"] for c in http.calls}
    assert len(http.calls) == 2 and len(keys) == 1
    assert _counts(db_settings.database_url) == (1, 3)
