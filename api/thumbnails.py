"""Small JPEG previews of stored originals, for the batch page's list of files.

An original can be a 20 MB TIFF that no browser shows; the list needs a few kilobytes per row.
A preview holds pixels only, never the original's metadata (README, "Image metadata").
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

# Long side of a preview in pixels: twice the list's display size, for high-density screens.
THUMBNAIL_PIXELS = 128


def thumbnail_jpeg(path: Path | BinaryIO, size: int = THUMBNAIL_PIXELS) -> bytes:
    """The stored image reduced to fit ``size`` x ``size``, upright, as JPEG bytes."""
    with Image.open(path) as img:
        # A JPEG decodes straight at a reduced scale: a fraction of a full decode's cost.
        img.draft("RGB", (size, size))
        small = ImageOps.exif_transpose(img).convert("RGB")
        small.thumbnail((size, size))
        # Pixels only: Pillow would carry a JPEG comment (patient text) into the preview.
        small.info.clear()
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
    return out.getvalue()
