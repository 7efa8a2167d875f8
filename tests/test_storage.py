from __future__ import annotations

import hashlib
import io
import os

import pytest

from leukoscreen.storage import ContentStore, TooLarge


def test_same_bytes_are_stored_once_under_their_sha256(tmp_path):
    store = ContentStore(tmp_path)
    data = b"x" * 5000
    key1 = store.commit(store.stage(io.BytesIO(data), 10_000))
    key2 = store.commit(store.stage(io.BytesIO(data), 10_000))
    assert key1 == key2 == hashlib.sha256(data).hexdigest()
    assert store.read(key1) == data
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert stored == [store.path_for(key1)]


def test_existing_file_is_never_overwritten(tmp_path):
    store = ContentStore(tmp_path)
    key = store.commit(store.stage(io.BytesIO(b"abc"), 100))
    path = store.path_for(key)
    path.write_bytes(b"tampered")  # simulate a different copy already present
    store.commit(store.stage(io.BytesIO(b"abc"), 100))
    assert path.read_bytes() == b"tampered"


def test_stream_over_limit_is_refused_and_leaves_no_temporary_file(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(TooLarge):
        store.stage(io.BytesIO(b"y" * 2048), 1024)
    assert list(store.tmp_dir.iterdir()) == []


def test_sweep_removes_files_of_dead_uploads_and_keeps_live_ones(tmp_path):
    store = ContentStore(tmp_path)
    live = store.stage(io.BytesIO(b"in progress"), 100)
    dead = store.stage(io.BytesIO(b"partial"), 100)
    orphan = dead.path.with_name(dead.path.name.replace(f"-{os.getpid()}-", "-999999999-"))
    dead.path.rename(orphan)
    assert store.sweep_temporary() == 1
    assert not orphan.exists() and live.path.exists()


def test_storage_key_must_be_a_sha256(tmp_path):
    with pytest.raises(ValueError):
        ContentStore(tmp_path).path_for("../../etc/passwd")
