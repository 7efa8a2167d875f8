"""Zip intake is bounded by what is actually read.

The overlapping-entry bomb of issue 12 pointed every central-directory entry at one local
header, each under the ratio guard, so a 105 KB upload inflated 2 GB. Such archives are now
refused before any entry is inflated, and uncompressed bytes are capped per archive and per
request, reading stopping as soon as a cap is passed.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
from dataclasses import replace

import pytest

from api import create_app
from api.intake import zip_layout_problem
from db import migrate
from tests.conftest import token_client
from tests.test_bad_input import _post, _zip

EOCD = struct.Struct("<4s4H2LH")


def overlapping_zip(data: bytes, copies: int) -> bytes:
    """One stored entry whose central-directory record is repeated: every copy points at the
    same local header, so a reader that trusts the directory inflates ``data`` ``copies`` times."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cell.jpg", data)
    raw = one.getvalue()
    eocd_at = raw.rindex(b"PK\x05\x06")
    _, disk, cd_disk, _, _, cd_size, cd_offset, comment = EOCD.unpack_from(raw, eocd_at)
    record = raw[cd_offset : cd_offset + cd_size]
    directory = record * copies
    eocd = EOCD.pack(
        b"PK\x05\x06", disk, cd_disk, copies, copies, len(directory), cd_offset, comment
    )
    return raw[:cd_offset] + directory + eocd


def _client(settings, **limits):  # type: ignore[no-untyped-def]
    migrate.upgrade(settings.database_url)
    return token_client(create_app(replace(settings, **limits)), settings.database_url)


def test_overlapping_entries_are_refused_quickly_with_a_reason(settings, make_jpeg):
    bomb = overlapping_zip(make_jpeg(3), copies=2000)
    assert len(bomb) < 200_000
    assert len(zipfile.ZipFile(io.BytesIO(bomb)).infolist()) == 2000
    client = _client(settings)
    started = time.monotonic()
    resp = _post(client, [("bomb.zip", bomb)])
    elapsed = time.monotonic() - started
    assert resp.status_code == 422, resp.json
    (row,) = resp.json["files"]
    assert row["file"] == "bomb.zip" and row["status"] == "rejected"
    assert "overlap" in row["reason"] and "zip bomb" in row["reason"]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    print(f"\n{len(bomb)} byte zip of 2000 overlapping entries refused in {elapsed * 1000:.0f} ms")


def test_entries_listed_out_of_order_are_refused(make_jpeg):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.jpg", make_jpeg(1))
        zf.writestr("b.jpg", make_jpeg(2))
        zf.filelist.reverse()  # the central directory lists b before a
    archive = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    assert "out of order" in (zip_layout_problem(archive, io.BytesIO(buf.getvalue())) or "")
    ordinary = _zip({"a.jpg": make_jpeg(1), "b.jpg": make_jpeg(2)})
    assert zip_layout_problem(zipfile.ZipFile(io.BytesIO(ordinary)), io.BytesIO(ordinary)) is None


def test_an_archive_declaring_more_than_its_limit_is_refused_unread(settings, make_jpeg):
    images = [make_jpeg(i) for i in range(4)]
    limit = sum(map(len, images)) - 1
    client = _client(settings, max_archive_bytes=limit)
    entries = {f"{i}.jpg": d for i, d in enumerate(images)}
    resp = _post(client, [("ok.jpg", make_jpeg(9)), ("lab.zip", _zip(entries))])
    rows = {f["file"]: f for f in resp.json["files"]}
    assert resp.status_code == 202 and resp.json["accepted"] == 1
    assert f"over the limit of {limit} per archive" in rows["lab.zip"]["reason"]


def test_reading_stops_when_the_request_allowance_is_used_up(settings, make_jpeg, monkeypatch):
    images = [make_jpeg(i) for i in range(6)]
    allowance = len(images[0]) + len(images[1]) + len(images[2]) // 2
    client = _client(settings, max_unpacked_bytes=allowance)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def counting_open(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    archive = _zip({f"{i}.jpg": d for i, d in enumerate(images[:5])})
    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    resp = _post(client, [("lab.zip", archive), ("late.jpg", images[5])])
    assert resp.status_code == 202
    rows = {f["file"]: f for f in resp.json["files"]}
    assert [rows[f"lab.zip/{i}.jpg"]["status"] for i in range(5)] == ["accepted"] * 2 + [
        "rejected"
    ] * 3
    for name in ("lab.zip/2.jpg", "lab.zip/3.jpg", "lab.zip/4.jpg", "late.jpg"):
        assert f"limit of {allowance} uncompressed bytes is used up" in rows[name]["reason"]
    # The entry that passed the allowance was the last one inflated.
    assert opened == ["0.jpg", "1.jpg", "2.jpg"]


@pytest.mark.parametrize("copies", [2, 50])
def test_layout_check_costs_one_header_read_per_entry(copies, make_jpeg):
    bomb = overlapping_zip(make_jpeg(1), copies)
    reason = zip_layout_problem(zipfile.ZipFile(io.BytesIO(bomb)), io.BytesIO(bomb))
    assert reason is not None and "overlap" in reason
