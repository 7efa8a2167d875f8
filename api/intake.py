"""Checking and storing uploads: each file is accepted, rejected with a reason, or a duplicate.

Nothing here knows about Flask or TensorFlow: it takes streams and names, writes accepted
originals to the content store, and returns what happened to every file.
"""

from __future__ import annotations

import enum
import io
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, BinaryIO

from PIL import Image, UnidentifiedImageError

from api.deidentify import StripError, strip_metadata
from api.specimen_ids import MANIFEST_NAME, MAX_MANIFEST_BYTES
from leukoscreen.config import Settings
from leukoscreen.imagetypes import canonical_format, describe_formats
from leukoscreen.storage import Staged, Store, TooLarge

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER_BYTES = 30
# Entries that archiving tools add beside the user's files, not files the user chose.
ARCHIVE_NOISE = ("__MACOSX/", ".DS_Store", "Thumbs.db")


class Code(enum.StrEnum):
    """Why a file was not scored, as a stable machine code beside the reason's words (exports
    carry both: the words for the technician, the code for a laboratory's own software)."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    DAMAGED_IMAGE = "damaged_image"
    METADATA_NOT_REMOVED = "metadata_not_removed"
    FILE_TOO_LARGE = "file_too_large"
    NOT_READ = "not_read"  # the request's or archive's allowance was used up before it
    UNREADABLE_ARCHIVE = "unreadable_archive"
    ARCHIVE_TOO_LARGE = "archive_too_large"
    UNSAFE_ARCHIVE = "unsafe_archive"  # zip bomb guards, unsafe paths, encryption, nesting
    DUPLICATE = "duplicate"


@dataclass
class FileOutcome:
    name: str
    status: str  # accepted | rejected | duplicate
    reason: str | None = None
    code: Code | None = None
    sha256: str | None = None
    size: int = 0
    width: int | None = None
    height: int | None = None
    format: str | None = None
    duplicate_of: str | None = None
    # Where the stored copy is: sha256 of the received bytes, or of the copy without metadata.
    storage_key: str | None = None


@dataclass
class IntakeReport:
    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


class ImageCheckError(ValueError):
    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def check_image(path: str, max_pixels: int) -> tuple[int, int, str]:
    """Decode a staged file fully; return (width, height, format) or raise with a reason."""
    try:
        with Image.open(path) as img:
            fmt = canonical_format(img.format)
            if fmt is None:
                raise ImageCheckError(
                    Code.UNSUPPORTED_FORMAT,
                    f"{img.format or 'unknown'} is not an accepted format ({describe_formats()})",
                )
            width, height = img.size
            # Checked before decoding so a tiny file claiming huge dimensions costs nothing.
            if width * height > max_pixels:
                raise ImageCheckError(
                    Code.TOO_MANY_PIXELS,
                    f"image is {width}x{height} pixels, over the {max_pixels} pixel limit",
                )
            if width < 1 or height < 1:
                raise ImageCheckError(Code.DAMAGED_IMAGE, "image has no pixels")
            if fmt == "JPEG":
                # Reduced-scale decoding still reads every byte of the entropy-coded data, so
                # truncation is caught, at about half the cost of a full decode.
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            return width, height, fmt
    except ImageCheckError:
        raise
    except UnidentifiedImageError:
        raise ImageCheckError(
            Code.NOT_AN_IMAGE, f"not an image: the file is not a {describe_formats()} picture"
        ) from None
    except Image.DecompressionBombError:
        raise ImageCheckError(
            Code.TOO_MANY_PIXELS,
            "image declares far more pixels than any smear photograph: not opened "
            "(decompression bomb guard)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # The decoder's own words stay in brackets: they help whoever looks at the file.
        raise ImageCheckError(
            Code.DAMAGED_IMAGE, f"image cannot be decoded: damaged or incomplete file ({exc})"
        ) from None


def _unsafe_zip_path(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path inside the archive refused"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' path inside the archive refused"
    return None


def zip_layout_problem(archive: zipfile.ZipFile, fh: BinaryIO) -> str | None:
    """Why an archive's entries cannot be trusted to be read once each, or None.

    A zip bomb can point many central-directory entries at one compressed stream (or at
    overlapping ones), so that a small archive inflates to any size while each entry still
    looks reasonable. Entries must follow each other in the central directory's order, each
    starting after the previous one's data ends, and all before the central directory.
    """
    previous_end, previous_name = 0, ""
    for info in archive.infolist():
        start = info.header_offset
        if start < previous_end:
            return (
                f"archive entries overlap or are out of order ({info.filename!r} starts inside "
                f"the data of {previous_name!r}): archive refused (zip bomb guard)"
            )
        fh.seek(start)
        header = fh.read(LOCAL_HEADER_BYTES)
        if len(header) < LOCAL_HEADER_BYTES or header[:4] != ZIP_MAGIC:
            return f"archive entry {info.filename!r} has no local header: archive refused"
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        previous_end = start + LOCAL_HEADER_BYTES + name_len + extra_len + info.compress_size
        previous_name = info.filename
        if previous_end > archive.start_dir:
            return (
                f"archive entry {info.filename!r} runs into the central directory: "
                "archive refused (zip bomb guard)"
            )
    return None


class BudgetSpent(Exception):
    """The request's (or archive's) allowance of uncompressed bytes is used up."""


class Intake:
    """Stages, checks and stores one request's files, remembering duplicates within a batch."""

    def __init__(self, settings: Settings, store: Store, known: dict[str, str]) -> None:
        self.settings = settings
        self.store = store
        self.seen = dict(known)  # sha256 -> first file name with those bytes in this batch
        self.report = IntakeReport()
        # Originals this request added to the store: removed again if it fails unrecorded.
        self.created: list[str] = []
        # Bytes this request may still unpack (plain files and archive entries, as read).
        self.unpacked_left = settings.max_unpacked_bytes
        # Zip uploads' names (their entries are reported as "archive.zip/inner/path") and the
        # specimen manifests found at the top of them (``api.specimen_ids``).
        self.archives: set[str] = set()
        self.manifests: list[bytes] = []
        self.manifest_problems: list[str] = []

    def _request_spent(self) -> str:
        return (
            f"the request's limit of {self.settings.max_unpacked_bytes} uncompressed bytes is "
            "used up: not read"
        )

    def _stage_entry(self, stream: IO[bytes], archive_left: int) -> Staged:
        """Stage an archive entry, reading no more than the file, request and archive limits.

        Raises TooLarge when the file alone is over its limit, BudgetSpent when the request
        or archive allowance runs out first; either way reading stops within one chunk.
        """
        budget = min(self.unpacked_left, archive_left)
        try:
            staged = self.store.stage(stream, min(self.settings.max_file_bytes, budget))
        except TooLarge:
            if budget >= self.settings.max_file_bytes:
                raise
            if budget == self.unpacked_left:
                self.unpacked_left = 0
            raise BudgetSpent from None
        self.unpacked_left -= staged.size
        return staged

    def add_upload(self, name: str, stream: BinaryIO) -> None:
        if self.unpacked_left <= 0:
            self._reject(name, self._request_spent(), code=Code.NOT_READ)
            return
        try:
            staged = self.store.stage(stream, self.settings.max_file_bytes)
        except TooLarge as exc:
            self._reject(name, str(exc), code=Code.FILE_TOO_LARGE)
            return
        if self._is_zip(staged):
            self.archives.add(name)
            try:
                self._add_zip(name, staged)
            finally:
                self.store.discard(staged)
            return
        if staged.size > self.unpacked_left:
            self.store.discard(staged)
            self.unpacked_left = 0
            self._reject(name, self._request_spent(), staged.size, Code.NOT_READ)
            return
        self.unpacked_left -= staged.size
        self._add_staged(name, staged)

    def _is_zip(self, staged: Staged) -> bool:
        with open(staged.path, "rb") as fh:
            return fh.read(4) == ZIP_MAGIC

    def _add_staged(self, name: str, staged: Staged) -> None:
        # Duplicates are found by the received bytes, not by a stripped copy's.
        received = staged.sha256
        outcome = FileOutcome(name=name, status="accepted", sha256=received, size=staged.size)
        if staged.size == 0:
            self.store.discard(staged)
            outcome.status, outcome.reason, outcome.code = "rejected", "empty file", Code.EMPTY_FILE
            self.report.outcomes.append(outcome)
            return
        if staged.sha256 in self.seen:
            self.store.discard(staged)
            outcome.status, outcome.code = "duplicate", Code.DUPLICATE
            outcome.duplicate_of = self.seen[staged.sha256]
            outcome.reason = (
                f"same file as {outcome.duplicate_of} in this batch: scored once, its result "
                "is shown for both"
            )
            self.report.outcomes.append(outcome)
            return
        try:
            outcome.width, outcome.height, outcome.format = check_image(
                str(staged.path), self.settings.max_image_pixels
            )
        except ImageCheckError as exc:
            self.store.discard(staged)
            outcome.status, outcome.reason, outcome.code = "rejected", str(exc), exc.code
            self.report.outcomes.append(outcome)
            return
        if self.settings.strip_metadata:
            try:
                staged = self._without_metadata(staged, outcome.format or "")
            except (StripError, ImageCheckError, OSError, ValueError) as exc:
                self.store.discard(staged)
                outcome.status, outcome.code = "rejected", Code.METADATA_NOT_REMOVED
                outcome.reason = f"metadata cannot be removed: {exc}"
                self.report.outcomes.append(outcome)
                return
        outcome.storage_key = staged.sha256
        if self.store.put(staged):  # one existence check, not two: each is a request to S3
            self.created.append(outcome.storage_key)
        self.seen[received] = name
        self.report.outcomes.append(outcome)

    def _without_metadata(self, staged: Staged, fmt: str) -> Staged:
        """Swap a staged upload for a staged copy without metadata (checked to decode)."""
        stripped = strip_metadata(staged.path.read_bytes(), fmt)
        clean = self.store.stage(io.BytesIO(stripped), max(len(stripped), 1))
        try:
            check_image(str(clean.path), self.settings.max_image_pixels)
        except ImageCheckError:
            self.store.discard(clean)
            raise
        self.store.discard(staged)
        return clean

    def _reject(
        self, name: str, reason: str, size: int = 0, code: Code = Code.UNSAFE_ARCHIVE
    ) -> None:
        self.report.outcomes.append(
            FileOutcome(name=name, status="rejected", reason=reason, code=code, size=size)
        )

    def _add_zip(self, name: str, staged: Staged) -> None:
        try:
            archive = zipfile.ZipFile(staged.path)
        except (zipfile.BadZipFile, OSError) as exc:
            self._reject(
                name, f"not a readable zip archive: {exc}", staged.size, Code.UNREADABLE_ARCHIVE
            )
            return
        with archive, open(staged.path, "rb") as raw:
            infos = archive.infolist()
            entries = [i for i in infos if not i.is_dir()]
            declared = sum(i.file_size for i in infos)
            limit = self.settings.max_archive_bytes
            code = Code.ARCHIVE_TOO_LARGE
            if len(entries) > self.settings.max_zip_entries:
                reason: str | None = (
                    f"archive has {len(entries)} files, over the limit of "
                    f"{self.settings.max_zip_entries}"
                )
            elif declared > limit:
                reason = (
                    f"archive holds {declared} uncompressed bytes, over the limit of {limit} "
                    "per archive"
                )
            else:
                reason, code = zip_layout_problem(archive, raw), Code.UNSAFE_ARCHIVE
            if reason:
                self._reject(name, reason, staged.size, code)
                return
            self._add_zip_entries(name, archive, entries, limit)

    def _add_zip_entries(
        self, name: str, archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo], limit: int
    ) -> None:
        archive_left = limit
        spent: str | None = None
        for info, reason, code in self._zip_entries(entries):
            entry_name = f"{name}/{info.filename}"
            if info.filename == MANIFEST_NAME and not reason and not spent:
                self._read_manifest(archive, info, entry_name)
                continue
            if spent:
                self._reject(entry_name, spent, info.file_size, Code.NOT_READ)
                continue
            if reason:
                self._reject(entry_name, reason, info.file_size, code)
                continue
            before = self.unpacked_left
            try:
                with archive.open(info) as member:
                    entry = self._stage_entry(member, archive_left)
            except TooLarge as exc:
                self._reject(entry_name, str(exc), info.file_size, Code.FILE_TOO_LARGE)
                continue
            except BudgetSpent:
                # Stop reading this archive at once; the rest of it is answered unread.
                spent = (
                    self._request_spent()
                    if self.unpacked_left <= 0
                    else f"the archive's limit of {limit} uncompressed bytes is used up: not read"
                )
                self._reject(entry_name, spent, info.file_size, Code.NOT_READ)
                continue
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                self._reject(
                    entry_name, f"archive entry cannot be read: {exc}", code=Code.UNREADABLE_ARCHIVE
                )
                continue
            archive_left -= before - self.unpacked_left
            self._add_staged(entry_name, entry)

    def _read_manifest(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
        # A manifest that cannot be read refuses the whole request (see api.specimen_ids).
        if info.file_size > MAX_MANIFEST_BYTES:
            self.manifest_problems.append(f"{name} is larger than {MAX_MANIFEST_BYTES} bytes")
            return
        try:
            with archive.open(info) as member:
                data = member.read(MAX_MANIFEST_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
            self.manifest_problems.append(f"{name} cannot be read: {exc}")
            return
        self.unpacked_left -= len(data)
        self.manifests.append(data)

    def _zip_entries(
        self, entries: list[zipfile.ZipInfo]
    ) -> Iterator[tuple[zipfile.ZipInfo, str | None, Code]]:
        for info in entries:
            if info.filename.startswith(ARCHIVE_NOISE) or info.filename.endswith(ARCHIVE_NOISE):
                continue
            reason = _unsafe_zip_path(info.filename)
            if reason is None and info.flag_bits & 0x1:
                reason = "encrypted archive entry refused"
            elif reason is None and info.filename.lower().endswith(".zip"):
                reason = "nested archives are not accepted; upload the inner archive itself"
            elif reason is None and info.file_size > self.settings.max_file_bytes:
                reason = f"file is larger than the {self.settings.max_file_bytes} byte limit"
                yield info, reason, Code.FILE_TOO_LARGE
                continue
            elif (
                reason is None
                and info.compress_size > 0
                and info.file_size / info.compress_size > self.settings.max_zip_ratio
            ):
                reason = (
                    f"compression ratio {info.file_size // info.compress_size}:1 is over the "
                    f"{self.settings.max_zip_ratio}:1 limit (zip bomb guard)"
                )
            yield info, reason, Code.UNSAFE_ARCHIVE
