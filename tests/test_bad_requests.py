"""Requests that used to answer 500 (issue 12): each is now a 4xx (or 507) with a reason."""

from __future__ import annotations

import errno
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import select

from api import create_app
from db import migrate
from db.accounts import find_user
from db.models import Batch, BatchState, Image, ImageState
from db.session import engine_for, session_factory
from leukoscreen import storage
from tests.conftest import create_account, token_client
from tests.test_storage_faults import _image_rows, _upload

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def app(settings):
    migrate.upgrade(settings.database_url)
    return create_app(settings)


@pytest.fixture
def admin(app, settings):
    return token_client(app, settings.database_url, "root", "admin")


def _user_id(settings, name: str) -> int:
    create_account(settings.database_url, name, "uploader")
    with session_factory(engine_for(settings.database_url))() as session:
        user = find_user(session, name)
        assert user is not None
        return user.id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/users"),
        ("patch", "/api/v1/users/{uid}"),
        ("post", "/api/v1/users/{uid}/tokens"),
        ("post", "/api/v1/images/1/reviews"),
    ],
)
def test_deeply_nested_json_is_a_400(admin, settings, method, path):
    uid = _user_id(settings, "nested")
    resp = getattr(admin, method)(path.format(uid=uid), data=DEEP, content_type="application/json")
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert "nested too deeply" in resp.json["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": ["admin"]}, "role"),
        ({"role": {"admin": True}}, "role"),
        ({"password": 12345678901}, "password"),
        ({"password": ["long enough password"]}, "password"),
    ],
)
def test_patch_user_with_mistyped_fields_is_a_400(admin, settings, body, field):
    uid = _user_id(settings, "typed")
    resp = admin.patch(f"/api/v1/users/{uid}", json=body)
    assert resp.status_code == 400
    assert resp.json["error"].startswith(f"{field} must be text")


def test_new_user_with_a_number_as_password_is_refused_not_coerced(admin):
    resp = admin.post(
        "/api/v1/users", json={"name": "n", "role": "uploader", "password": 1234567890}
    )
    assert resp.status_code == 400 and "password must be text" in resp.json["error"]


OVER_A_MEBIBYTE = "x" * (2 * 1024 * 1024)


def test_a_json_body_over_a_mebibyte_is_refused_before_it_is_read(admin, settings):
    # Only uploads may be as large as LEUKOSCREEN_MAX_REQUEST_BYTES (2 GB): a JSON body that
    # large would be parsed whole in memory.
    uid = _user_id(settings, "big")
    resp = admin.patch(f"/api/v1/users/{uid}", json={"password": OVER_A_MEBIBYTE})
    assert resp.status_code == 413 and resp.json["error"]
    created = admin.post(
        "/api/v1/users", json={"name": "n", "role": "uploader", "password": OVER_A_MEBIBYTE}
    )
    assert created.status_code == 413


def test_the_sign_in_form_refuses_a_body_over_a_mebibyte(app):
    # Anyone may post it: a multipart part would otherwise be spooled to disk, up to 2 GB.
    resp = app.test_client().post(
        "/login",
        data={"username": "x", "file": (io.BytesIO(OVER_A_MEBIBYTE.encode()), "f.bin")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 413


def test_an_upload_over_a_mebibyte_is_still_received(admin, make_jpeg):
    resp = admin.post(
        "/api/v1/batches",
        data={
            "images": [
                (io.BytesIO(make_jpeg(1)), "a.jpg"),
                (io.BytesIO(OVER_A_MEBIBYTE.encode()), "b.jpg"),
            ]
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202 and resp.json["accepted"] == 1


def test_an_upload_of_many_small_files_is_not_held_in_memory(admin, make_jpeg):
    # Werkzeug keeps every file part under 500 KB in memory, and smear images are that size:
    # a 2 GB upload of them would sit in one worker's memory until the request ends.
    boundary = "b0undary"
    picture = make_jpeg(1)
    filler = b"\xff" * 400_000
    parts = [("images", "a.jpg", picture)] + [("images", f"{i}.bin", filler) for i in range(100)]
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
            for field, name, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    tracemalloc.start()
    try:
        resp = admin.post(
            "/api/v1/batches",
            data=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 202 and resp.json["accepted"] == 1
    assert len(resp.json["files"]) == 101
    # 40 MB were sent; what the request holds in memory is a small part of that.
    assert peak < 10_000_000, peak


@pytest.mark.parametrize(
    "query",
    [
        "until=9999-12-31",
        "since=9999-12-31&until=9999-12-31",
        "after=nan:1",
        "after=inf:1",
        "after=-0.5:1",
        "after=0.5:99999999999999999999",
    ],
)
def test_review_queue_refuses_out_of_range_values(admin, query):
    resp = admin.get(f"/api/v1/review/queue?{query}")
    assert resp.status_code == 400, resp.json
    assert resp.json["error"]


def _stored_files(root: Path) -> list[str]:
    return [
        name for _, _, files in os.walk(root) for name in files if not name.startswith(".incoming")
    ]


class _FullDiskFile(io.BytesIO):
    def write(self, data):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_receiving_the_upload_is_a_507(app, settings, make_jpeg, monkeypatch):
    monkeypatch.setattr("api.spool._spool_file", _FullDiskFile)
    resp = _upload(app, make_jpeg, 3)
    assert resp.status_code == 507, resp.json
    assert "No space left" in resp.json["error"]
    assert _image_rows(settings) == 0


def test_full_disk_midway_through_storing_is_a_507_and_leaves_no_file(
    app, settings, make_jpeg, monkeypatch
):
    """The fourth file's last buffered bytes hit ENOSPC: the three stored before go too."""
    real_fdopen, opened = os.fdopen, []

    def filling_fdopen(fd, *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real_fdopen(fd, *args, **kwargs)
        opened.append(handle)
        if len(opened) >= 4:
            handle.flush = _raise_enospc  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(storage.os, "fdopen", filling_fdopen)
    resp = _upload(app, make_jpeg, 6)
    assert resp.status_code == 507, resp.json
    assert _image_rows(settings) == 0
    assert _stored_files(settings.storage_dir) == []


def _raise_enospc() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_part_of_only_rejected_files_leaves_a_complete_batch_complete(app, settings, make_jpeg):
    client = token_client(app, settings.database_url)
    first = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(make_jpeg(1)), "a.jpg")]},
        content_type="multipart/form-data",
    ).json
    sessions = session_factory(engine_for(settings.database_url))
    with sessions.begin() as session:
        session.get(Batch, first["batch_id"]).state = BatchState.COMPLETE.value
        for image in session.scalars(select(Image)):
            image.state = ImageState.SCORED.value
    resp = client.post(
        f"/api/v1/batches/{first['batch_id']}/images",
        data={
            "images": [(io.BytesIO(b"not an image"), "n.jpg"), (io.BytesIO(make_jpeg(1)), "b.jpg")]
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    assert (resp.json["accepted"], resp.json["rejected"], resp.json["duplicate"]) == (0, 1, 1)
    status = client.get(f"/api/v1/batches/{first['batch_id']}").json
    assert status["state"] == "complete" and status["pending"] == 0
