"""Which specimen (accession) each uploaded file belongs to: manifest, folders or one id.

A laboratory's specimen is one patient's smear, photographed as many field images. An upload
names the specimen of each file in one of three ways, checked in this order:

1. a manifest: a CSV part (``manifest`` form field, or a file ``manifest.csv`` among the
   images or at the top of a zip) with columns ``file``, ``specimen_id`` and optional
   ``source``; when a manifest is sent, every image must be in it;
2. folders: with ``specimen_folders`` set, the folder a file sits in (``S-0001/field1.jpg``
   in a zip or in ``leukoscreen submit DIR``) is its specimen id;
3. one id for the whole upload (``specimen_id`` form field).

Nothing here touches storage or the database: :func:`assign` returns every file's specimen or
every problem at once, so a bad manifest refuses the whole request before anything is recorded.
Identifiers are checked against a strict pattern and never used to build a path.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MANIFEST_NAME = "manifest.csv"
# Letters, digits and . _ - (accession numbers as LIS systems print them), starting with a
# letter or digit: safe in URLs, file names of exports and FHIR identifiers alike.
SPECIMEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SOURCE_CHARS = 255
FILE_COLUMNS = ("file", "file_name", "filename")
ID_COLUMNS = ("specimen_id", "accession", "specimen")


class SpecimenError(ValueError):
    """The upload's specimen identities are unusable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_specimen_id(value: str) -> str:
    """The identifier, stripped, or :class:`SpecimenError` saying what is wrong with it."""
    value = value.strip()
    if not SPECIMEN_ID.fullmatch(value):
        raise SpecimenError(
            [
                f"specimen id {value[:80]!r} is not valid: use 1 to 64 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            ]
        )
    return value


@dataclass(frozen=True)
class ManifestRow:
    line: int
    file: str
    specimen_id: str
    source: str = ""


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in header:
            return name
    return None


def parse_manifest(data: bytes) -> list[ManifestRow]:
    """Rows of a manifest CSV, or :class:`SpecimenError` listing every problem in it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise SpecimenError([f"manifest is larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecimenError(
            [f"manifest is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"]
        ) from None
    if "\x00" in text:
        raise SpecimenError(["manifest contains NUL characters: it is not a CSV text file"])
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [(h or "").strip().lower() for h in reader.fieldnames or []]
    file_col, id_col = _column(header, FILE_COLUMNS), _column(header, ID_COLUMNS)
    if file_col is None or id_col is None:
        raise SpecimenError(
            [
                "manifest needs a header row with columns 'file' and 'specimen_id' "
                f"(and optionally 'source'); found {header or 'no header'}"
            ]
        )
    reader.fieldnames = header
    rows: list[ManifestRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        for record in reader:
            line = reader.line_num
            file = (record.get(file_col) or "").strip()
            raw_id = (record.get(id_col) or "").strip()
            source = (record.get("source") or "").strip()
            if not file and not raw_id:
                continue  # a blank line at the end of a spreadsheet export
            if not file:
                problems.append(f"manifest line {line}: no file name")
                continue
            if file in seen:
                problems.append(
                    f"manifest line {line}: {file!r} is listed again (first on line {seen[file]})"
                )
                continue
            seen[file] = line
            if not raw_id:
                problems.append(f"manifest line {line}: {file!r} has no specimen id")
                continue
            try:
                specimen = check_specimen_id(raw_id)
            except SpecimenError as exc:
                problems.append(f"manifest line {line}: {exc}")
                continue
            if len(source) > MAX_SOURCE_CHARS:
                problems.append(
                    f"manifest line {line}: source is longer than {MAX_SOURCE_CHARS} characters"
                )
                continue
            rows.append(ManifestRow(line, file, specimen, source))
    except csv.Error as exc:
        problems.append(f"manifest is not valid CSV: {exc}")
    if problems:
        raise SpecimenError(problems)
    if not rows:
        raise SpecimenError(["manifest lists no files"])
    return rows


@dataclass(frozen=True)
class Specimen:
    specimen_id: str
    source: str = ""


def _inner_path(name: str, archives: set[str]) -> str:
    """A file's path as the laboratory sees it: inside its zip, without the archive's name."""
    head, _, rest = name.partition("/")
    return rest if rest and head in archives else name


def _folder_of(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    return parts[-2] if len(parts) >= 2 else None


def assign(
    names: list[str],
    *,
    archives: set[str] | None = None,
    manifest: list[ManifestRow] | None = None,
    folders: bool = False,
    upload_id: str | None = None,
    required: set[str] | None = None,
) -> dict[str, Specimen]:
    """Each uploaded file's specimen, or :class:`SpecimenError` listing every problem.

    ``names`` are the upload's file names as intake reports them (``archive.zip/dir/x.jpg``
    for a zip entry; ``archives`` are the zip files' own names). A manifest row matches a file
    by its path inside the upload, or by its bare name when that is unique. Files without an
    identity are left out of the answer unless a manifest was sent (or folders asked for):
    then every file in ``required`` (default: all) must have one.
    """
    required = set(names) if required is None else required
    archives = archives or set()
    default = Specimen(check_specimen_id(upload_id)) if upload_id else None
    by_path = {name: _inner_path(name, archives) for name in names}
    by_base: dict[str, list[str]] = {}
    for name, inner in by_path.items():
        by_base.setdefault(PurePosixPath(inner).name, []).append(name)

    found: dict[str, Specimen] = {}
    problems: list[str] = []
    if manifest is not None:
        exact = {inner: name for name, inner in by_path.items()}
        for row in manifest:
            target = exact.get(row.file)
            if target is None:
                matches = by_base.get(row.file, [])
                if len(matches) > 1:
                    problems.append(
                        f"manifest line {row.line}: {row.file!r} matches {len(matches)} files; "
                        "give its folder too"
                    )
                    continue
                target = matches[0] if matches else None
            if target is None:
                problems.append(
                    f"manifest line {row.line}: {row.file!r} is not among the uploaded files"
                )
                continue
            if target in found:
                problems.append(f"manifest line {row.line}: {target!r} is listed twice")
                continue
            found[target] = Specimen(row.specimen_id, row.source)
    for name in names:
        if name in found:
            continue
        folder = _folder_of(by_path[name]) if folders else None
        if folder is not None:
            try:
                found[name] = Specimen(check_specimen_id(folder))
            except SpecimenError as exc:
                if name in required:
                    problems.append(f"{name}: folder name is not a specimen id: {exc}")
        elif default is not None:
            found[name] = default
        elif name not in required:
            continue
        elif manifest is not None:
            problems.append(f"{name} is not in the manifest: every file needs a specimen id")
        elif folders:
            problems.append(f"{name} is in no folder: its folder name is its specimen id")
    if problems:
        raise SpecimenError(problems)
    return found
