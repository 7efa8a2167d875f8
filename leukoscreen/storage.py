"""Content-addressed storage of original uploads.

Files are named by the SHA-256 of their bytes, written to a temporary file in the same
directory tree and renamed into place, so a reader never sees a partial file and the same
bytes uploaded twice are stored once. The directory can be a volume shared by hosts; hosts
without one use the S3-compatible object store of ``leukoscreen/objectstore.py`` (chosen by
``open_store`` from ``LEUKOSCREEN_STORAGE``), which has the same interface, ``Store``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from leukoscreen.config import Settings

CHUNK = 1024 * 1024
TMP_PREFIX = ".incoming-"


class TooLarge(Exception):
    """The stream carried more bytes than the per-file limit."""


class StorageUnavailable(Exception):
    """The store cannot be written (full, read-only, missing): nothing may be recorded."""

    def __init__(self, cause: OSError, action: str = "written") -> None:
        super().__init__(f"image storage cannot be {action}: {cause.strerror or cause}")
        self.full = cause.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Staged:
    """Bytes received into a temporary file, hashed, not yet committed to the store."""

    path: Path
    sha256: str
    size: int


def relative_name(key: str) -> str:
    """Where a key lives under the store's root: the same layout on disk and in a bucket, so
    that a filesystem store can be copied into an object store as it is."""
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not a SHA-256 storage key: {key!r}")
    return f"{key[:2]}/{key[2:4]}/{key}"


class Store(Protocol):
    """What intake, workers, downloads, retention and /healthz need of a store of originals."""

    def exists(self, key: str) -> bool: ...

    def stage(self, stream: BinaryIO | Iterable[bytes], max_bytes: int) -> Staged: ...

    def commit(self, staged: Staged) -> str: ...

    def put(self, staged: Staged) -> bool: ...

    def flush(self) -> None: ...

    def discard(self, staged: Staged) -> None: ...

    def remove(self, key: str) -> None: ...

    def check_writable(self, min_free_bytes: int) -> None: ...

    def read(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def size(self, key: str) -> int | None: ...

    def sweep_temporary(self, foreign_older_than_s: float = 86_400) -> int: ...


def open_store(settings: Settings) -> Store:
    """The store ``LEUKOSCREEN_STORAGE`` names: the filesystem by default, or ``s3://``."""
    if not settings.storage_url:
        return ContentStore(settings.storage_dir)
    if not settings.storage_url.startswith("s3://"):
        raise ValueError(
            f"LEUKOSCREEN_STORAGE must be empty (the filesystem) or s3://bucket/prefix, "
            f"not {settings.storage_url!r}"
        )
    from leukoscreen.objectstore import S3Store  # boto3 only where a bucket is configured

    return S3Store.from_settings(settings)


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def path_for(self, key: str) -> Path:
        return self.root / relative_name(key)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def stage(self, stream: BinaryIO | Iterable[bytes], max_bytes: int) -> Staged:
        """Copy a stream to a temporary file while hashing it, never holding it all in memory."""
        digest = hashlib.sha256()
        size = 0
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=self._tmp_prefix(), dir=self.tmp_dir)
        except OSError as exc:
            raise StorageUnavailable(exc) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                chunks = (
                    iter(lambda: stream.read(CHUNK), b"") if hasattr(stream, "read") else stream
                )
                for chunk in chunks:  # a read error is the upload's, not the store's
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"file is larger than the {max_bytes} byte limit")
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise StorageUnavailable(exc) from exc
                try:  # the last buffered bytes: a full disk can refuse them here too
                    out.flush()
                except OSError as exc:
                    raise StorageUnavailable(exc) from exc
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Staged(path=Path(name), sha256=digest.hexdigest(), size=size)

    def commit(self, staged: Staged) -> str:
        """Move a staged file to its content address; an existing copy is kept as it is.

        Call ``flush()`` before recording committed files anywhere.
        """
        self.put(staged)
        return staged.sha256

    def put(self, staged: Staged) -> bool:
        """``commit``, answering whether this call stored the bytes (they were not there):
        the intake removes only what it stored should its request fail."""
        final = self.path_for(staged.sha256)
        if final.exists():
            staged.path.unlink(missing_ok=True)
            return False
        # link() fails if another writer won the race, so an existing file is never replaced.
        created = False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.link(staged.path, final)
                created = True
        except OSError as exc:
            staged.path.unlink(missing_ok=True)
            raise StorageUnavailable(exc) from exc
        staged.path.unlink(missing_ok=True)
        return created

    def flush(self) -> None:
        """Make every file committed so far durable before the database records it.

        One sync per request instead of one fsync per file: a 250-image upload spent most of
        its time in per-file fsync calls.
        """
        os.sync()

    def discard(self, staged: Staged) -> None:
        staged.path.unlink(missing_ok=True)

    def remove(self, key: str) -> None:
        """Delete a stored original that no database row records (an upload that failed)."""
        self.path_for(key).unlink(missing_ok=True)

    def check_writable(self, min_free_bytes: int) -> None:
        """Raise StorageUnavailable unless a file can be written here and space is left.

        For /healthz: a full or read-only volume must show before an upload fails on it.
        """
        self.discard(self.stage(io.BytesIO(b"\0" * 4096), 4096))
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StorageUnavailable(exc) from exc
        if free < min_free_bytes:
            raise StorageUnavailable(
                OSError(errno.ENOSPC, f"{free} bytes free, under the {min_free_bytes} needed")
            )

    def read(self, key: str) -> bytes:
        return self.path_for(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self.path_for(key).open("rb")

    def size(self, key: str) -> int | None:
        """Bytes of a stored original, or None when it is not there."""
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            return None

    @staticmethod
    def _tmp_prefix() -> str:
        # Owner host and pid in the name let a sweeper tell an orphan from a live upload.
        return f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"

    def sweep_temporary(self, foreign_older_than_s: float = 86_400) -> int:
        """Remove temporary files left by processes killed mid-upload.

        Files of this host are removed as soon as their process is gone; files of other hosts
        sharing the volume only once they are old, since their owners cannot be checked.
        """
        if not self.tmp_dir.is_dir():
            return 0
        removed = 0
        host = socket.gethostname()
        cutoff = time.time() - foreign_older_than_s
        for entry in self.tmp_dir.glob(TMP_PREFIX + "*"):
            owner_host, _, rest = entry.name[len(TMP_PREFIX) :].rpartition("-")[0].rpartition("-")
            try:
                if owner_host == host and rest.isdigit():
                    orphan = not _pid_alive(int(rest))
                else:
                    orphan = entry.stat().st_mtime <= cutoff
                if orphan:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
