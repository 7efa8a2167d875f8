"""What counts as an image, in one place: intake accepts these, the API serves stored originals
with their type, training and the benchmark read folders of them.

WebP (and anything else) is refused at intake, so training and evaluation do not read it
either: the model only ever sees the formats the service scores.
"""

from __future__ import annotations

from pathlib import Path

# Pillow's format name -> the MIME type the API serves a stored original with.
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff"}
# Pillow names a multi-picture JPEG (from many cameras) "MPO"; it is still a JPEG.
FORMAT_ALIASES = {"MPO": "JPEG"}
# File name endings of those formats, for reading folders (intake goes by content, not name).
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


def canonical_format(pillow_format: str | None) -> str | None:
    """The accepted format a file decoded as, or None when it is not accepted."""
    fmt = FORMAT_ALIASES.get(pillow_format or "", pillow_format or "")
    return fmt if fmt in MIME_TYPES else None


def describe_formats() -> str:
    """'JPEG, PNG, BMP or TIFF', for messages."""
    names = list(MIME_TYPES)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def has_image_suffix(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES
