"""Every kind of bad input gets its documented answer; valid files sent alongside still count.

Each case uploads the bad file together with one good image: the bad one must be rejected
with a readable reason (or accepted, where the format is valid but unusual), the good one
accepted, and the API must never answer 500.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from api import create_app
from tests.conftest import token_client


def _img(mode: str, fmt: str, size=(64, 64), **kw) -> bytes:
    rng = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )


def _palette_png_with_transparency() -> bytes:
    img = Image.new("P", (32, 32), 1)
    img.putpalette([0, 0, 0, 200, 30, 90] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _jpeg_with_exif_rotation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _img("RGB", "JPEG", size=(40, 80), exif=exif.tobytes())


def _zip(entries: dict[str, bytes], compress=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _encrypted_zip(good: bytes) -> bytes:
    """An archive whose entry is marked encrypted, as a password-protected one is."""
    data = bytearray(_zip({"secret.jpg": good}, compress=zipfile.ZIP_STORED))
    # zipfile cannot write encrypted entries: set the flag bit in both headers by hand.
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    return bytes(data)


# (file name, bytes factory, expected status, words the reason must contain)
CASES: list[tuple[str, str, Callable[[bytes], bytes], str, str]] = [
    ("zero-byte", "empty.jpg", lambda g: b"", "rejected", "empty"),
    ("truncated jpeg", "cut.jpg", lambda g: g[: len(g) // 2], "rejected", "truncated"),
    ("text named .jpg", "notes.jpg", lambda g: b"patient notes\n" * 20, "rejected", "not an image"),
    (
        "html named .png",
        "page.png",
        lambda g: b"<html><script>alert(1)</script></html>",
        "rejected",
        "not an image",
    ),
    (
        "svg with script",
        "vector.jpg",
        lambda g: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "rejected",
        "not an image",
    ),
    (
        "decompression bomb png",
        "bomb.png",
        lambda g: _png_claiming(30000, 30000),
        "rejected",
        "decompression bomb",
    ),
    ("16-bit tiff", "deep.tif", lambda g: _img("I;16", "TIFF"), "accepted", ""),
    ("cmyk jpeg", "cmyk.jpg", lambda g: _img("CMYK", "JPEG"), "accepted", ""),
    ("greyscale png", "grey.png", lambda g: _img("L", "PNG"), "accepted", ""),
    (
        "palette png with transparency",
        "pal.png",
        lambda g: _palette_png_with_transparency(),
        "accepted",
        "",
    ),
    ("animated gif", "anim.gif", lambda g: _animated_gif(), "rejected", "GIF is not an accepted"),
    ("jpeg with exif rotation", "rot.jpg", lambda g: _jpeg_with_exif_rotation(), "accepted", ""),
    ("bmp", "old.bmp", lambda g: _img("RGB", "BMP"), "accepted", ""),
    ("unicode and rtl name", "лейкоз_\u202etxt.jpg", lambda g: _img("RGB", "JPEG"), "accepted", ""),
    (
        "script in file name",
        "<script>alert(1)</script>.jpg",
        lambda g: _img("RGB", "PNG"),
        "accepted",
        "",
    ),
]


def _post(client, files: list[tuple[str, bytes]], field: str = "images"):
    return client.post(
        "/api/v1/batches",
        data={field: [(io.BytesIO(d), n) for n, d in files]},
        content_type="multipart/form-data",
    )


@pytest.mark.parametrize(
    ("kind", "name", "make", "status", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_file_gets_its_answer_and_the_good_one_is_still_accepted(
    client, make_jpeg, kind, name, make, status, reason
):
    good = make_jpeg(7)
    resp = _post(client, [("good.jpg", good), (name, make(good))])
    assert resp.status_code == 202, resp.get_data(as_text=True)
    rows = {f["file"]: f for f in resp.json["files"]}
    assert rows["good.jpg"]["status"] == "accepted"
    assert rows[name]["status"] == status, rows[name]
    if reason:
        assert reason in rows[name]["reason"]


def test_file_over_the_per_file_limit_is_rejected(db_settings, make_jpeg):
    from dataclasses import replace

    client = token_client(
        create_app(replace(db_settings, max_file_bytes=30_000)), db_settings.database_url
    )
    resp = _post(
        client, [("good.jpg", make_jpeg(1)), ("huge.bmp", _img("RGB", "BMP", size=(200, 200)))]
    )
    rows = {f["file"]: f for f in resp.json["files"]}
    assert resp.status_code == 202 and "byte limit" in rows["huge.bmp"]["reason"]


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ({"../../etc/evil.jpg": b"x"}, "'..' path"),
        ({"/abs/evil.jpg": b"x"}, "absolute path"),
        ({"inner.zip": _zip({"a.jpg": b"x"})}, "nested archives"),
        ({"bomb.bmp": b"\x00" * 5_000_000}, "compression ratio"),
    ],
)
def test_dangerous_zip_entries_are_refused_one_by_one(client, make_jpeg, entries, reason):
    archive = _zip({"ok.jpg": make_jpeg(3), **entries})
    resp = _post(client, [("lab.zip", archive)])
    assert resp.status_code == 202
    rows = {f["file"]: f for f in resp.json["files"]}
    assert rows["lab.zip/ok.jpg"]["status"] == "accepted"
    bad = [r for name, r in rows.items() if name != "lab.zip/ok.jpg"]
    assert len(bad) == 1 and reason in bad[0]["reason"]


def test_encrypted_zip_entry_is_refused(client, make_jpeg):
    resp = _post(client, [("good.jpg", make_jpeg(1)), ("locked.zip", _encrypted_zip(b"x"))])
    rows = {f["file"]: f for f in resp.json["files"]}
    assert "encrypted" in rows["locked.zip/secret.jpg"]["reason"]


def test_zip_of_ten_thousand_tiny_entries_is_answered_entry_by_entry(client, make_jpeg):
    entries = {f"tiny/{i}.jpg": b"\xff\xd8" for i in range(10_000)}
    resp = _post(client, [("good.jpg", make_jpeg(1)), ("many.zip", _zip(entries))])
    assert resp.status_code == 202
    assert resp.json["accepted"] == 1 and resp.json["rejected"] == 10_000


def test_archive_with_too_many_entries_is_refused_whole(db_settings, make_jpeg):
    from dataclasses import replace

    client = token_client(
        create_app(replace(db_settings, max_zip_entries=100)), db_settings.database_url
    )
    archive = _zip({f"{i}.jpg": b"x" for i in range(101)})
    resp = _post(client, [("good.jpg", make_jpeg(1)), ("many.zip", archive)])
    rows = {f["file"]: f for f in resp.json["files"]}
    assert "over the limit of 100" in rows["many.zip"]["reason"]


def test_corrupt_zip_is_rejected_with_its_reason(client, make_jpeg):
    resp = _post(client, [("good.jpg", make_jpeg(1)), ("broken.zip", b"PK\x03\x04garbage")])
    rows = {f["file"]: f for f in resp.json["files"]}
    assert "not a readable zip" in rows["broken.zip"]["reason"]


def test_empty_batch_and_wrong_field_are_400(client, make_jpeg):
    assert (
        client.post("/api/v1/batches", data={}, content_type="multipart/form-data").status_code
        == 400
    )
    assert _post(client, [("a.jpg", make_jpeg(1))], field="file").status_code == 400


def test_broken_multipart_body_is_a_4xx_not_500(client):
    resp = client.post(
        "/api/v1/batches",
        data=b"--xyz\r\nContent-Disposition: form-da",
        content_type="multipart/form-data; boundary=xyz",
    )
    assert 400 <= resp.status_code < 500 and resp.is_json


def test_json_body_instead_of_multipart_is_400(client):
    resp = client.post("/api/v1/batches", json={"images": ["a.jpg"]})
    assert resp.status_code == 400 and resp.is_json


def test_file_names_come_back_verbatim_as_json_never_html(client):
    name = "<script>alert(1)</script>\u202egpj.jpg"
    resp = _post(client, [(name, _img("RGB", "PNG"))])
    assert resp.mimetype == "application/json"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.json["files"][0]["file"] == name
