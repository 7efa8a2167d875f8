"""Uploaded file parts go to disk as they arrive, all of one request's in one temporary file.

Werkzeug keeps each file part of up to 500 KB in memory, and a smear image is about that
size: an upload of thousands of them (a browser sends every chosen file in one request, up to
``LEUKOSCREEN_MAX_REQUEST_BYTES``) would otherwise sit in one worker's memory whole. One file
per request, not one per part, so that a large upload does not open thousands of files.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import IO, Any

from flask import Request


def _spool_file() -> IO[bytes]:
    # Unnamed: the operating system removes it when it is closed, whatever happens.
    return tempfile.TemporaryFile()


class Part(io.RawIOBase):
    """One file part: the bytes it was written, a window of the request's spool file.

    The parser writes the parts one after another, so a part's bytes are the end of the
    file while it is written and are never followed by its own later bytes.
    """

    def __init__(self, spool: IO[bytes]) -> None:
        super().__init__()
        self._spool = spool
        self._start = self._end = spool.seek(0, os.SEEK_END)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._spool.seek(self._end)
        written = self._spool.write(data)
        self._end += written
        return written

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._end - self._start - self._pos)
        if wanted <= 0:
            return 0
        self._spool.seek(self._start + self._pos)
        got = self._spool.readinto(memoryview(buffer)[:wanted])  # type: ignore[attr-defined]
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end - self._start}
        position = base[whence] + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        return self._pos


class SpoolingRequest(Request):
    """Flask's request, with file parts in one temporary file (see the module's docstring)."""

    _spool: IO[bytes] | None = None

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if self._spool is None:
            self._spool = _spool_file()
        return Part(self._spool)  # type: ignore[return-value]

    def close(self) -> None:
        super().close()
        if self._spool is not None:
            self._spool.close()
