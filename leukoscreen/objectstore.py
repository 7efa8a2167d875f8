"""Originals in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...), for worker hosts
that share no volume with the API.

The same content addressing as the filesystem store (``relative_name``: the object key is the
SHA-256 under the configured prefix, in the same two-level layout, so a filesystem store can be
copied into a bucket as it is). Staging stays on the API host's disk (``storage_dir/tmp``): the
upload is hashed and checked there, and only a committed file is sent, with one PUT, which S3
makes visible whole or not at all: a reader never sees a partial object. An object that is
already there is not sent again.

Errors of the service are turned into ``StorageUnavailable`` with a plain message, as the
filesystem's full and read-only disks are: a full store is 507, a bucket that refuses access or
cannot be reached 503, never a 500 with a botocore trace.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from leukoscreen.config import Settings
from leukoscreen.storage import ContentStore, Staged, StorageUnavailable, relative_name

# Error codes that mean "no room": MinIO's full disks, quotas of Ceph and other gateways.
FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"})
# Codes that mean the credentials may not write here: the bucket's equivalent of read-only.
REFUSED_CODES = frozenset(
    {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# Downloads up to this size stay in memory; larger ones spill to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024


def _as_os_error(exc: Exception) -> OSError:
    """The service's answer as the OSError a disk would have given, with words an operator
    can act on (the full answer goes to the log with the exception)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        said = code or str(status)
        if code in FULL_CODES or status == 507:
            return OSError(errno.ENOSPC, f"the object store is full ({said})")
        if code in REFUSED_CODES or status == 403:
            return OSError(errno.EACCES, f"the bucket refuses access ({said})")
        if code == "NoSuchBucket":
            return OSError(errno.ENOENT, "the bucket does not exist")
        return OSError(errno.EIO, f"the object store answered {said}")
    return OSError(errno.EIO, f"the object store cannot be reached ({type(exc).__name__})")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in MISSING_CODES


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise StorageUnavailable(_as_os_error(exc), action) from exc


def s3_client_factory(endpoint_url: str, region: str) -> Callable[[], Any]:
    def new_client() -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            # One connection per thread of the worker's decode pool (max(2, cores)).
            max_pool_connections=max(10, os.cpu_count() or 1),
            # A self-hosted endpoint (MinIO, moto) rarely has a DNS name per bucket.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )

    return new_client


class S3Store:
    def __init__(
        self, bucket: str, prefix: str, staging_root: Path, new_client: Callable[[], Any]
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.staging = ContentStore(staging_root)
        self.tmp_dir = self.staging.tmp_dir
        self._new_client = new_client
        self._client: Any = None
        self._client_pid = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        url = urlsplit(settings.storage_url)
        if url.scheme != "s3" or not url.netloc:
            raise ValueError(
                f"LEUKOSCREEN_STORAGE must look like s3://bucket/prefix: {settings.storage_url!r}"
            )
        return cls(
            url.netloc,
            url.path,
            settings.storage_dir,
            s3_client_factory(settings.s3_endpoint_url, settings.s3_region),
        )

    @property
    def client(self) -> Any:
        # Made lazily in each process: a client made before gunicorn or Celery forks would
        # share its pooled connections with every child.
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._new_client()
                self._client_pid = os.getpid()
            return self._client

    def object_key(self, key: str) -> str:
        return self.prefix + relative_name(key)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """Bytes of a stored original, or None when it is not there."""
        with _translated("read"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
        return int(head["ContentLength"])

    def stage(self, stream: BinaryIO | Iterable[bytes], max_bytes: int) -> Staged:
        return self.staging.stage(stream, max_bytes)

    def commit(self, staged: Staged) -> str:
        self.put(staged)
        return staged.sha256

    def put(self, staged: Staged) -> bool:
        """Send a staged file to its content address unless the bucket has it already;
        True when this call sent it."""
        try:
            if self.exists(staged.sha256):
                return False
            with _translated("written"), staged.path.open("rb") as body:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.object_key(staged.sha256),
                    Body=body,
                    # The store checks the bytes it received against the address.
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(staged.sha256)).decode(),
                )
            return True
        finally:
            staged.path.unlink(missing_ok=True)

    def flush(self) -> None:
        """Nothing to do: a PUT is durable when the store answers it."""

    def discard(self, staged: Staged) -> None:
        self.staging.discard(staged)

    def remove(self, key: str) -> None:
        with _translated("written"):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def check_writable(self, min_free_bytes: int) -> None:
        """Raise StorageUnavailable unless the staging disk has room and the bucket takes a
        write; a bucket has no free-space figure, a full one refuses the probe."""
        self.staging.check_writable(min_free_bytes)
        probe = f"{self.prefix}.healthz/{socket.gethostname()}-{os.getpid()}"
        with _translated("written"):
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"\0" * 4096)
            self.client.delete_object(Bucket=self.bucket, Key=probe)

    def _body(self, key: str) -> Any:
        with _translated("read"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            except ClientError as exc:
                if _missing(exc):
                    # The filesystem store's answer: the worker fails that image alone.
                    raise FileNotFoundError(errno.ENOENT, "no stored original", key) from exc
                raise

    def read(self, key: str) -> bytes:
        body = self._body(key)
        with _translated("read"), contextlib.closing(body):
            return bytes(body.read())

    def open(self, key: str) -> BinaryIO:
        body = self._body(key)
        # Handed to the caller, who closes it (send_file, a with block).
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        try:
            with _translated("read"), contextlib.closing(body):
                shutil.copyfileobj(body, spool)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def sweep_temporary(self, foreign_older_than_s: float = 86_400) -> int:
        return self.staging.sweep_temporary(foreign_older_than_s)
