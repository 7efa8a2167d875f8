"""Checking and storing uploads: each file is accepted, rejected with a reason, or a duplicate.

Nothing here knows about Flask or TensorFlow: it takes streams and names, writes accepted
originals to the content store, and returns what happened to every file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from api.deidentify import StripError, strip_metadata
from leukoscreen.config import Settings
from leukoscreen.imagetypes import canonical_format, describe_formats
from leukoscreen.storage import ContentStore, Staged, TooLarge

ZIP_MAGIC = b"PK\x03\x04"
# Entries that archiving tools add beside the user's files, not files the user chose.
ARCHIVE_NOISE = ("__MACOSX/", ".DS_Store", "Thumbs.db")


@dataclass
class FileOutcome:
    name: str
    status: str  # accepted | rejected | duplicate
    reason: str | None = None
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
    pass


def check_image(path: str, max_pixels: int) -> tuple[int, int, str]:
    """Decode a staged file fully; return (width, height, format) or raise with a reason."""
    try:
        with Image.open(path) as img:
            fmt = canonical_format(img.format)
            if fmt is None:
                raise ImageCheckError(
                    f"{img.format or 'unknown'} is not an accepted format ({describe_formats()})"
                )
            width, height = img.size
            # Checked before decoding so a tiny file claiming huge dimensions costs nothing.
            if width * height > max_pixels:
                raise ImageCheckError(
                    f"image is {width}x{height} pixels, over the {max_pixels} pixel limit"
                )
            if width < 1 or height < 1:
                raise ImageCheckError("image has no pixels")
            if fmt == "JPEG":
                # Reduced-scale decoding still reads every byte of the entropy-coded data, so
                # truncation is caught, at about half the cost of a full decode.
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            return width, height, fmt
    except ImageCheckError:
        raise
    except UnidentifiedImageError:
        raise ImageCheckError("not an image file Pillow can decode") from None
    except Image.DecompressionBombError as exc:
        raise ImageCheckError(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageCheckError(f"image cannot be decoded: {exc}") from None


def _unsafe_zip_path(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path inside the archive refused"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' path inside the archive refused"
    return None


class Intake:
    """Stages, checks and stores one request's files, remembering duplicates within a batch."""

    def __init__(self, settings: Settings, store: ContentStore, known: dict[str, str]) -> None:
        self.settings = settings
        self.store = store
        self.seen = dict(known)  # sha256 -> first file name with those bytes in this batch
        self.report = IntakeReport()

    def add_upload(self, name: str, stream: BinaryIO) -> None:
        try:
            staged = self.store.stage(stream, self.settings.max_file_bytes)
        except TooLarge as exc:
            self._reject(name, str(exc))
            return
        if self._is_zip(staged):
            try:
                self._add_zip(name, staged)
            finally:
                self.store.discard(staged)
            return
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
            outcome.status, outcome.reason = "rejected", "empty file"
            self.report.outcomes.append(outcome)
            return
        if staged.sha256 in self.seen:
            self.store.discard(staged)
            outcome.status = "duplicate"
            outcome.duplicate_of = self.seen[staged.sha256]
            outcome.reason = f"same bytes as {outcome.duplicate_of} in this batch"
            self.report.outcomes.append(outcome)
            return
        try:
            outcome.width, outcome.height, outcome.format = check_image(
                str(staged.path), self.settings.max_image_pixels
            )
        except ImageCheckError as exc:
            self.store.discard(staged)
            outcome.status, outcome.reason = "rejected", str(exc)
            self.report.outcomes.append(outcome)
            return
        if self.settings.strip_metadata:
            try:
                staged = self._without_metadata(staged, outcome.format or "")
            except (StripError, ImageCheckError, OSError, ValueError) as exc:
                self.store.discard(staged)
                outcome.status, outcome.reason = "rejected", f"metadata cannot be removed: {exc}"
                self.report.outcomes.append(outcome)
                return
        outcome.storage_key = self.store.commit(staged)
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

    def _reject(self, name: str, reason: str, size: int = 0) -> None:
        self.report.outcomes.append(
            FileOutcome(name=name, status="rejected", reason=reason, size=size)
        )

    def _add_zip(self, name: str, staged: Staged) -> None:
        try:
            archive = zipfile.ZipFile(staged.path)
        except (zipfile.BadZipFile, OSError) as exc:
            self._reject(name, f"not a readable zip archive: {exc}", staged.size)
            return
        with archive:
            entries = [i for i in archive.infolist() if not i.is_dir()]
            if len(entries) > self.settings.max_zip_entries:
                self._reject(
                    name,
                    f"archive has {len(entries)} files, over the limit of "
                    f"{self.settings.max_zip_entries}",
                    staged.size,
                )
                return
            for info, reason in self._zip_entries(entries):
                entry_name = f"{name}/{info.filename}"
                if reason:
                    self._reject(entry_name, reason, info.file_size)
                    continue
                try:
                    with archive.open(info) as member:
                        entry = self.store.stage(member, self.settings.max_file_bytes)
                except TooLarge as exc:
                    self._reject(entry_name, str(exc), info.file_size)
                    continue
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                    self._reject(entry_name, f"archive entry cannot be read: {exc}")
                    continue
                self._add_staged(entry_name, entry)

    def _zip_entries(
        self, entries: list[zipfile.ZipInfo]
    ) -> Iterator[tuple[zipfile.ZipInfo, str | None]]:
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
            elif (
                reason is None
                and info.compress_size > 0
                and info.file_size / info.compress_size > self.settings.max_zip_ratio
            ):
                reason = (
                    f"compression ratio {info.file_size // info.compress_size}:1 is over the "
                    f"{self.settings.max_zip_ratio}:1 limit (zip bomb guard)"
                )
            yield info, reason
