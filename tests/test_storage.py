from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace

import pytest
from botocore.exceptions import ClientError

from bench.processes import free_port
from leukoscreen.config import load_settings
from leukoscreen.objectstore import S3Store
from leukoscreen.storage import ContentStore, StorageUnavailable, Store, TooLarge, open_store
from tests.conftest import bucket_keys


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


# The contract every store keeps, run on the filesystem and on a local S3-compatible server.


@pytest.fixture(params=["filesystem", "s3"])
def any_store(request, settings) -> Store:  # type: ignore[no-untyped-def]
    if request.param == "s3":
        settings = replace(settings, **request.getfixturevalue("s3_bucket"))
    return open_store(settings)


def _plant(store: Store, key: str, data: bytes) -> None:
    """Put bytes under a key behind the store's back, as another writer would."""
    if isinstance(store, ContentStore):
        store.path_for(key).parent.mkdir(parents=True, exist_ok=True)
        store.path_for(key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=store.object_key(key), Body=data)


def test_every_store_addresses_content_by_its_sha256(any_store):
    data = b"x" * 5000
    key1 = any_store.commit(any_store.stage(io.BytesIO(data), 10_000))
    key2 = any_store.commit(any_store.stage(io.BytesIO(data), 10_000))
    assert key1 == key2 == hashlib.sha256(data).hexdigest()
    assert any_store.put(any_store.stage(io.BytesIO(data), 10_000)) is False  # already there
    assert any_store.put(any_store.stage(io.BytesIO(b"new"), 10)) is True
    assert any_store.exists(key1) and any_store.size(key1) == len(data)
    assert any_store.read(key1) == data
    with any_store.open(key1) as fh:
        assert fh.read() == data
    assert list(any_store.tmp_dir.iterdir()) == []  # staging files go once committed


def test_every_store_keeps_an_existing_copy_instead_of_sending_it_again(any_store):
    key = hashlib.sha256(b"abc").hexdigest()
    _plant(any_store, key, b"already there")
    assert any_store.commit(any_store.stage(io.BytesIO(b"abc"), 100)) == key
    assert any_store.read(key) == b"already there"


def test_every_store_refuses_an_oversized_stream_and_leaves_no_staging_file(any_store):
    with pytest.raises(TooLarge):
        any_store.stage(io.BytesIO(b"y" * 2048), 1024)
    assert list(any_store.tmp_dir.iterdir()) == []


def test_every_store_answers_a_missing_original_as_a_missing_file(any_store):
    key = hashlib.sha256(b"never stored").hexdigest()
    assert not any_store.exists(key) and any_store.size(key) is None
    with pytest.raises(FileNotFoundError):
        any_store.read(key)
    any_store.remove(key)  # removing what is not there is no error


def test_every_store_removes_an_original_and_discards_a_staged_file(any_store):
    key = any_store.commit(any_store.stage(io.BytesIO(b"to remove"), 100))
    any_store.remove(key)
    assert not any_store.exists(key)
    staged = any_store.stage(io.BytesIO(b"not wanted"), 100)
    any_store.discard(staged)
    assert not staged.path.exists() and not any_store.exists(staged.sha256)


def test_every_store_passes_the_health_check_and_refuses_a_key_that_is_not_a_sha256(any_store):
    any_store.check_writable(1024)
    with pytest.raises(ValueError):
        any_store.exists("../../etc/passwd")


def test_the_object_store_puts_originals_in_the_bucket_in_the_filesystem_layout(
    settings, s3_bucket
):
    s3 = replace(settings, **s3_bucket)
    store = open_store(s3)
    key = store.commit(store.stage(io.BytesIO(b"smear"), 100))
    assert bucket_keys(s3) == [f"originals/{key[:2]}/{key[2:4]}/{key}"]
    # Staging stays on the API host; nothing else is written locally.
    assert [p for p in settings.storage_dir.rglob("*") if p.is_file()] == []


class _Refusing:
    """A client whose writes the service refuses with ``code``; reads pass through."""

    def __init__(self, real: object, code: str, status: int) -> None:
        self.real, self.code, self.status = real, code, status

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def put_object(self, **_: object) -> None:
        error = {"Error": {"Code": self.code, "Message": "refused"}}
        raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": self.status}}, "Put")


def refusing(store: S3Store, code: str, status: int) -> S3Store:
    real = store.client
    store._new_client = lambda: _Refusing(real, code, status)
    store._client = None
    return store


@pytest.mark.parametrize(
    ("code", "status", "full", "words"),
    [
        ("XMinioStorageFull", 507, True, "the object store is full (XMinioStorageFull)"),
        ("QuotaExceeded", 403, True, "the object store is full (QuotaExceeded)"),
        ("AccessDenied", 403, False, "the bucket refuses access (AccessDenied)"),
        ("InternalError", 500, False, "the object store answered InternalError"),
    ],
)
def test_a_refused_write_is_storage_unavailable_in_plain_words(
    settings, s3_bucket, code, status, full, words
):
    store = refusing(open_store(replace(settings, **s3_bucket)), code, status)  # type: ignore[arg-type]
    staged = store.stage(io.BytesIO(b"refused"), 100)
    with pytest.raises(StorageUnavailable) as refused:
        store.commit(staged)
    assert refused.value.full is full
    assert str(refused.value) == f"image storage cannot be written: {words}"
    assert not staged.path.exists()
    with pytest.raises(StorageUnavailable):
        store.check_writable(1024)


def test_a_missing_bucket_or_an_unreachable_endpoint_is_storage_unavailable(settings, s3_bucket):
    gone = replace(settings, **{**s3_bucket, "storage_url": "s3://no-such-bucket/x"})
    store = open_store(gone)
    with pytest.raises(StorageUnavailable, match="cannot be read: the bucket does not exist"):
        store.read(hashlib.sha256(b"").hexdigest())
    with pytest.raises(StorageUnavailable, match="cannot be written: the bucket does not exist"):
        store.commit(store.stage(io.BytesIO(b"lost"), 100))
    closed = replace(
        settings, **{**s3_bucket, "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    with pytest.raises(StorageUnavailable, match="cannot be reached"):
        open_store(closed).read(hashlib.sha256(b"").hexdigest())


def test_a_storage_setting_that_is_not_s3_is_refused_at_start(settings):
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_store(replace(settings, storage_url="gs://bucket"))


def test_the_object_store_is_chosen_by_the_storage_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKOSCREEN_VAR_DIR", str(tmp_path))
    assert isinstance(open_store(load_settings()), ContentStore)  # the default
    monkeypatch.setenv("LEUKOSCREEN_STORAGE", "s3://lab-images/leukoscreen/originals")
    monkeypatch.setenv("LEUKOSCREEN_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("LEUKOSCREEN_S3_REGION", "eu-central-1")
    settings = load_settings()
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("lab-images", "leukoscreen/originals/")
    assert (settings.s3_endpoint_url, settings.s3_region) == ("http://minio:9000", "eu-central-1")
    assert store.tmp_dir == settings.storage_dir / "tmp"  # staging stays on local disk


def test_originals_are_read_through_the_store_never_by_a_path_of_their_own():
    from tests.conftest import REPO

    uses = {
        str(path.relative_to(REPO)): path.read_text().count(".path_for(")
        for folder in ("api", "worker", "db", "model", "leukoscreen", "bench")
        for path in (REPO / folder).rglob("*.py")
        if ".path_for(" in path.read_text()
    }
    # The store itself, and the download, which sends a filesystem store's file by path.
    assert uses == {
        "leukoscreen/storage.py": uses.get("leukoscreen/storage.py"),
        "api/batches.py": 1,
    }
