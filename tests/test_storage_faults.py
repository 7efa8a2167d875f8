"""Storage that fills up or turns read-only: a clear 507/503, and nothing recorded as accepted."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from api import create_app
from db.models import Image
from db.session import engine_for, session_factory
from tests.conftest import token_client


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root with mount rights): {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint))
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    _mount("--bind", "-o", "ro", str(folder), str(folder))
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _image_rows(settings) -> int:
    with session_factory(engine_for(settings.database_url))() as s:
        return s.scalar(select(func.count()).select_from(Image))


def _upload(app, make_jpeg, n: int):
    files = [(io.BytesIO(make_jpeg(i, size=(300, 300), quality=95)), f"{i}.jpg") for i in range(n)]
    return token_client(app, app.extensions["leukoscreen"]["settings"].database_url).post(
        "/api/v1/batches", data={"images": files}, content_type="multipart/form-data"
    )


def test_full_storage_answers_507_and_records_nothing(db_settings, small_disk, make_jpeg):
    app = create_app(replace(db_settings, storage_dir=small_disk))
    resp = _upload(app, make_jpeg, 8)
    assert resp.status_code == 507, resp.json
    assert "storage" in resp.json["error"]
    assert _image_rows(db_settings) == 0


def test_read_only_storage_answers_503_and_records_nothing(db_settings, read_only_dir, make_jpeg):
    app = create_app(replace(db_settings, storage_dir=read_only_dir))
    resp = _upload(app, make_jpeg, 2)
    assert resp.status_code == 503
    assert "storage" in resp.json["error"]
    assert _image_rows(db_settings) == 0
