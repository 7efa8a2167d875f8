"""Removing metadata (EXIF, XMP, IPTC, comments, PNG and TIFF text) from stored originals.

Scanners and cameras write patient names, accession numbers, dates and device serials into
these fields. With LEUKOSCREEN_STRIP_METADATA on, the store keeps only the pixels:

* JPEG: the marker segments are rewritten without APP1-APP13, APP15 and COM (EXIF, XMP,
  IPTC, ICC profile, comments) and without anything after the first image (MPO secondary
  pictures, trailing data). The entropy-coded data is copied byte for byte, so the pixels are
  exactly those of the upload: no re-encoding loss. APP0 (JFIF) and APP14 (Adobe, which says
  how to convert the colours) carry no free text and stay. An image whose EXIF orientation
  is not upright is the exception: it is decoded, turned upright and saved at quality 95,
  since the orientation would otherwise be lost with the EXIF block.
* PNG, TIFF: decoded and saved again losslessly (PNG, or LZW-compressed TIFF), turned upright,
  with no text chunks, tags beyond the image structure, EXIF or ICC profile. Transparency is
  kept. Only the first frame of a multi-page TIFF is kept (the only one scored).
* BMP: has no metadata fields; stored as received.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageOps

ORIENTATION = 0x0112
# Segments with no length field: SOI, EOI, TEM and the restart markers.
_STANDALONE = {0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)}
_KEEP_APP = {0xE0, 0xEE}  # JFIF and Adobe colour transform


class StripError(ValueError):
    pass


def strip_metadata(data: bytes, fmt: str) -> bytes:
    """The image in ``data`` (checked format ``fmt``) without metadata."""
    if fmt == "JPEG":
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(ORIENTATION, 1)
        if orientation in (1, None):
            return strip_jpeg_segments(data)
        return _reencode(data, "JPEG")
    if fmt in ("PNG", "TIFF"):
        return _reencode(data, fmt)
    if fmt == "BMP":
        return data
    raise StripError(f"cannot remove metadata from {fmt}")


def strip_jpeg_segments(data: bytes) -> bytes:
    """Rewrite a JPEG's marker segments without metadata; scan data is copied unchanged."""
    if data[:2] != b"\xff\xd8":
        raise StripError("not a JPEG stream")
    out = bytearray(b"\xff\xd8")
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise StripError(f"JPEG marker expected at byte {pos}")
        while pos < end and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: anything after it is not part of this image
            out += b"\xff\xd9"
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if pos + 2 > end:
            raise StripError("JPEG segment truncated")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        segment = data[pos : pos + length]
        if len(segment) != length or length < 2:
            raise StripError("JPEG segment truncated")
        pos += length
        if (0xE0 <= marker <= 0xEF and marker not in _KEEP_APP) or marker == 0xFE:
            continue
        out += bytes((0xFF, marker)) + segment
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            scan_end = _scan_end(data, pos)
            out += data[pos:scan_end]
            pos = scan_end
    raise StripError("JPEG stream has no end marker")


def _scan_end(data: bytes, pos: int) -> int:
    """Index of the first marker after entropy-coded data (FF00 and restarts belong to it)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def _reencode(data: bytes, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        upright = ImageOps.exif_transpose(opened)
        upright.load()
        # A plain copy without .info: Pillow would otherwise write text, EXIF and ICC back out
        # (and a TiffImageFile its XMP, IPTC and Photoshop tags).
        clean = upright.copy()
        transparency = upright.info.get("transparency")
        clean.info = {}
        options: dict[str, object] = {}
        if transparency is not None:
            options["transparency"] = transparency
        if fmt == "JPEG":
            options.update(quality=95, subsampling=0)
        elif fmt == "TIFF":
            options["compression"] = "tiff_lzw"
        out = io.BytesIO()
        clean.save(out, format=fmt, **options)
    return out.getvalue()
