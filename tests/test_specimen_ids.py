"""Specimen identities from a manifest, from folders or one per upload; every bad kind refused."""

from __future__ import annotations

import pytest

from api.specimen_ids import (
    Specimen,
    SpecimenError,
    assign,
    check_specimen_id,
    parse_manifest,
)


def manifest(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_manifest_rows_carry_file_specimen_and_source() -> None:
    rows = parse_manifest(manifest("file,specimen_id,source", "a.jpg,S-1,ward 3", "b.jpg, S-2 ,"))
    assert [(r.file, r.specimen_id, r.source) for r in rows] == [
        ("a.jpg", "S-1", "ward 3"),
        ("b.jpg", "S-2", ""),
    ]


def test_manifest_saved_by_a_spreadsheet_with_bom_and_crlf_is_read() -> None:
    data = "\ufeffFile,Accession\r\na.jpg,S-1\r\n,\r\n".encode()
    assert [(r.file, r.specimen_id) for r in parse_manifest(data)] == [("a.jpg", "S-1")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"name,id\na.jpg,S-1\n", "needs a header row"),
        ("file,specimen_id\na.jpg,S-1\n".encode("utf-16"), "not UTF-8"),
        ("file,specimen_id\naé.jpg,S-1\n".encode("latin-1"), "not UTF-8"),
        (manifest("file,specimen_id", "a.jpg,S-1", "a.jpg,S-2"), "listed again (first on line 2)"),
        (manifest("file,specimen_id", "a.jpg,"), "'a.jpg' has no specimen id"),
        (manifest("file,specimen_id", ",S-1"), "no file name"),
        (manifest("file,specimen_id", "a.jpg,../../etc"), "is not valid"),
        (manifest("file,specimen_id", "a.jpg,S 1"), "is not valid"),
        (manifest("file,specimen_id", "a.jpg," + "x" * 65), "is not valid"),
        (manifest("file,specimen_id"), "lists no files"),
        (b"file,specimen_id\na.jpg,S-1\x00\n", "NUL"),
    ],
)
def test_bad_manifests_are_refused_with_their_reason(data: bytes, expected: str) -> None:
    with pytest.raises(SpecimenError) as err:
        parse_manifest(data)
    assert expected in str(err.value)


def test_every_problem_of_a_manifest_is_reported_at_once() -> None:
    with pytest.raises(SpecimenError) as err:
        parse_manifest(manifest("file,specimen_id", "a.jpg,", "b.jpg,bad id", "c.jpg,S-3"))
    assert len(err.value.problems) == 2


@pytest.mark.parametrize("value", ["", " ", "-x", ".hidden", "a/b", "a\\b", "S\x001", "é1"])
def test_specimen_ids_outside_the_pattern_are_refused(value: str) -> None:
    with pytest.raises(SpecimenError):
        check_specimen_id(value)


def test_manifest_matches_zip_entries_by_inner_path_or_unique_bare_name() -> None:
    names = ["up.zip/S1/a.jpg", "up.zip/S2/a.jpg", "up.zip/b.jpg", "c.jpg"]
    rows = parse_manifest(
        manifest("file,specimen_id", "S1/a.jpg,S-1", "S2/a.jpg,S-2", "b.jpg,S-2", "c.jpg,S-3")
    )
    found = assign(names, archives={"up.zip"}, manifest=rows)
    assert {n: s.specimen_id for n, s in found.items()} == {
        "up.zip/S1/a.jpg": "S-1",
        "up.zip/S2/a.jpg": "S-2",
        "up.zip/b.jpg": "S-2",
        "c.jpg": "S-3",
    }


def test_manifest_naming_an_ambiguous_or_unknown_file_or_missing_one_is_refused() -> None:
    names = ["up.zip/S1/a.jpg", "up.zip/S2/a.jpg", "up.zip/d.jpg"]
    rows = parse_manifest(manifest("file,specimen_id", "a.jpg,S-1", "zzz.jpg,S-2"))
    with pytest.raises(SpecimenError) as err:
        assign(names, archives={"up.zip"}, manifest=rows)
    text = str(err.value)
    assert "matches 2 files" in text
    assert "'zzz.jpg' is not among the uploaded files" in text
    assert "up.zip/d.jpg is not in the manifest" in text


def test_folders_name_specimens_and_a_file_outside_any_folder_is_refused() -> None:
    names = ["up.zip/S-1/a.jpg", "up.zip/S-1/b.jpg", "S-2/c.jpg"]
    found = assign(names, archives={"up.zip"}, folders=True)
    assert {s.specimen_id for s in found.values()} == {"S-1", "S-2"}
    with pytest.raises(SpecimenError, match="in no folder"):
        assign(["up.zip/loose.jpg"], archives={"up.zip"}, folders=True)
    with pytest.raises(SpecimenError, match="folder name is not a specimen id"):
        assign(["bad name/x.jpg"], folders=True)


def test_one_id_for_the_upload_fills_files_without_another_identity() -> None:
    rows = parse_manifest(manifest("file,specimen_id", "a.jpg,S-1"))
    found = assign(["a.jpg"], manifest=rows, upload_id="S-9")
    assert found == {"a.jpg": Specimen("S-1")}
    assert assign(["a.jpg", "b.jpg"], upload_id="S-9") == {
        "a.jpg": Specimen("S-9"),
        "b.jpg": Specimen("S-9"),
    }
    assert assign(["a.jpg"]) == {}


def test_a_bad_upload_wide_id_is_refused() -> None:
    with pytest.raises(SpecimenError, match="is not valid"):
        assign(["a.jpg"], upload_id="../x")
