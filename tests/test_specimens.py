"""Specimens end to end in the API: identity at intake, the roll-up's rules, sign-off, pages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select, text, update

from db.audit import AppendOnlyError
from db.models import Batch, Image, SpecimenSignoff
from db.reviews import record_decision
from db.session import engine_for, session_factory
from db.specimens import SpecimenStatus, load_specimen
from db.tenancy import DEFAULT_LAB_ID
from tests.conftest import browser_login, create_account, csrf_token, token_client
from tests.reviewdata import EVERY_LAB, seed_scored


def post(client, files: list[tuple[bytes, str]], **fields: str):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {"images": [(io.BytesIO(b), n) for b, n in files], **fields}
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data")


def csv_manifest(*rows: str) -> bytes:
    return ("file,specimen_id,source\n" + "\n".join(rows) + "\n").encode()


def export(client, batch_id: str) -> list[dict]:  # type: ignore[type-arg]
    return client.get(f"/api/v1/batches/{batch_id}/results").json["results"]


def test_a_manifest_part_names_the_specimen_of_every_file(client, make_jpeg):
    resp = client.post(
        "/api/v1/batches",
        data={
            "images": [(io.BytesIO(make_jpeg(1)), "a.jpg"), (io.BytesIO(make_jpeg(2)), "b.jpg")],
            "manifest": [(io.BytesIO(csv_manifest("a.jpg,S-1,ward 3", "b.jpg,S-2,")), "m.csv")],
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202, resp.json
    assert {f["file"]: f["specimen_id"] for f in resp.json["files"]} == {
        "a.jpg": "S-1",
        "b.jpg": "S-2",
    }
    rows = export(client, resp.json["batch_id"])
    assert {r["file_name"]: r["specimen_id"] for r in rows} == {"a.jpg": "S-1", "b.jpg": "S-2"}
    csv_text = client.get(f"/api/v1/batches/{resp.json['batch_id']}/results?format=csv").text
    assert "specimen_id" in csv_text.splitlines()[0]
    assert client.get("/api/v1/specimens/S-1").json["source"] == "ward 3"


def test_a_zip_with_a_folder_per_specimen_and_a_top_level_manifest(client, make_jpeg):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("S-7/a.jpg", make_jpeg(1))
        zf.writestr("S-7/b.jpg", make_jpeg(2))
        zf.writestr("S-8/c.jpg", make_jpeg(3))
    by_folder = post(client, [(buf.getvalue(), "up.zip")], specimen_folders="1")
    assert by_folder.status_code == 202, by_folder.json
    assert sorted(f["specimen_id"] for f in by_folder.json["files"]) == ["S-7", "S-7", "S-8"]

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.csv", csv_manifest("x.jpg,S-9,", "y.jpg,S-9,"))
        zf.writestr("x.jpg", make_jpeg(4))
        zf.writestr("y.jpg", make_jpeg(5))
    with_manifest = post(client, [(buf.getvalue(), "up2.zip")])
    assert with_manifest.status_code == 202, with_manifest.json
    # The manifest itself is not an image: two files, both in S-9.
    assert [f["specimen_id"] for f in with_manifest.json["files"]] == ["S-9", "S-9"]


def test_one_id_for_a_whole_upload(client, make_jpeg):
    resp = post(client, [(make_jpeg(1), "a.jpg"), (make_jpeg(2), "b.jpg")], specimen_id="ACC-42")
    assert [f["specimen_id"] for f in resp.json["files"]] == ["ACC-42", "ACC-42"]
    assert client.get("/api/v1/specimens/ACC-42").json["counts"]["images"] == 2


@pytest.mark.parametrize(
    ("manifest", "fields", "expected"),
    [
        (csv_manifest("a.jpg,S-1,"), {}, "b.jpg is not in the manifest"),
        (csv_manifest("a.jpg,S-1,", "b.jpg,S-2,", "c.jpg,S-3,"), {}, "'c.jpg' is not among"),
        (csv_manifest("a.jpg,S-1,", "a.jpg,S-2,", "b.jpg,S-2,"), {}, "listed again"),
        (csv_manifest("a.jpg,S-1,", "b.jpg,../x,"), {}, "is not valid"),
        ("file,specimen_id\na.jpg,S-1\nb.jpg,Sé\n".encode("latin-1"), {}, "not UTF-8"),
        (None, {"specimen_id": "a/b"}, "is not valid"),
        (None, {"specimen_folders": "1"}, "in no folder"),
    ],
)
def test_bad_specimen_identities_refuse_the_upload_and_record_nothing(
    client, db_settings, make_jpeg, manifest, fields, expected
):
    files = [(make_jpeg(1), "a.jpg"), (make_jpeg(2), "b.jpg")]
    if manifest is not None:
        files.append((manifest, "manifest.csv"))
    resp = post(client, files, **fields)
    assert resp.status_code == 422
    assert any(expected in p for p in resp.json["problems"]), resp.json
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
    stored = [p for p in Path(db_settings.storage_dir).rglob("*") if p.is_file()]
    assert [p for p in stored if "staging" not in p.parts] == []


def test_a_rejected_file_named_in_the_manifest_does_not_refuse_the_rest(client, make_jpeg):
    manifest = csv_manifest("a.jpg,S-1,", "broken.jpg,S-1,")
    resp = post(
        client,
        [(make_jpeg(1), "a.jpg"), (b"not an image", "broken.jpg"), (manifest, "manifest.csv")],
    )
    assert resp.status_code == 202, resp.json
    status = {f["file"]: f["status"] for f in resp.json["files"]}
    assert status == {"a.jpg": "accepted", "broken.jpg": "rejected"}


def _seed_specimen(db_settings, scores: list[float], specimen: str = "S-1") -> list[int]:  # type: ignore[no-untyped-def]
    _, ids = seed_scored(db_settings.database_url, scores)
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id.in_(ids)).values(specimen_id=specimen))
    return ids


def test_status_follows_the_documented_rules_through_review_sign_and_amend(app, db_settings):
    ids = _seed_specimen(db_settings, [0.9, 0.1, 0.7])
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    spec = reviewer.get("/api/v1/specimens/S-1").json
    assert spec["status"] == SpecimenStatus.NEEDS_REVIEW
    # Most suspicious first; two flagged images await a decision.
    assert [i["p_leukemia"] for i in spec["images"]] == [0.9, 0.7, 0.1]
    assert spec["counts"]["awaiting_decision"] == 2
    early = reviewer.post(
        "/api/v1/specimens/S-1/signoffs", json={"interpretation": "inadequate_sample"}
    )
    assert early.status_code == 409 and "2 image(s) still wait" in early.json["error"]

    for image_id in (ids[0], ids[2]):
        assert (
            reviewer.post(
                f"/api/v1/images/{image_id}/reviews", json={"decision": "confirmed"}
            ).status_code
            == 201
        )
    assert reviewer.get("/api/v1/specimens/S-1").json["status"] == SpecimenStatus.READY_TO_SIGN
    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert [(s["specimen_id"], s["status"]) for s in listed] == [("S-1", "ready_to_sign")]

    signed = reviewer.post(
        "/api/v1/specimens/S-1/signoffs",
        json={"interpretation": "leukemia_suspected", "comment": "blasts in 2 fields"},
    )
    assert signed.status_code == 201, signed.json
    first_id = signed.json["signoff_id"]
    assert signed.json["specimen"]["status"] == SpecimenStatus.SIGNED
    again = reviewer.post(
        "/api/v1/specimens/S-1/signoffs", json={"interpretation": "inadequate_sample"}
    )
    assert again.status_code == 409 and "already signed" in again.json["error"]

    # A new image for the specimen: the signature no longer covers everything.
    _seed_specimen(db_settings, [0.05])
    assert reviewer.get("/api/v1/specimens/S-1").json["status"] == "changed_since_signing"
    no_reason = reviewer.post(
        "/api/v1/specimens/S-1/signoffs",
        json={"interpretation": "leukemia_suspected", "amends_id": first_id},
    )
    assert no_reason.status_code == 400
    amended = reviewer.post(
        "/api/v1/specimens/S-1/signoffs",
        json={
            "interpretation": "leukemia_suspected",
            "amends_id": first_id,
            "comment": "fourth field added, cleared",
        },
    )
    assert amended.status_code == 201, amended.json
    body = amended.json["specimen"]
    assert body["status"] == "signed"
    assert [s["amends_id"] for s in body["signoffs"]] == [None, first_id]
    stale = reviewer.post(
        "/api/v1/specimens/S-1/signoffs",
        json={"interpretation": "no_leukemia_detected", "amends_id": first_id, "comment": "x"},
    )
    assert stale.status_code == 409


def test_uploaders_read_specimens_but_cannot_sign(app, db_settings):
    _seed_specimen(db_settings, [0.1])
    uploader = token_client(app, db_settings.database_url, "tech", "uploader")
    assert uploader.get("/api/v1/specimens/S-1").status_code == 200
    resp = uploader.post(
        "/api/v1/specimens/S-1/signoffs", json={"interpretation": "inadequate_sample"}
    )
    assert resp.status_code == 403
    assert uploader.get("/api/v1/specimens/NOPE").status_code == 404
    assert uploader.get("/api/v1/specimens/" + "x" * 300).status_code == 404


def test_signoffs_are_append_only_in_the_application_and_the_database(db_settings):
    _seed_specimen(db_settings, [0.1])
    create_account(db_settings.database_url, "path", "reviewer")
    sessions = session_factory(engine_for(db_settings.database_url))
    from db.accounts import find_user
    from db.specimens import sign

    with sessions.begin() as session:
        user = find_user(session, "path")
        assert user is not None
        sign(session, "S-1", "no_leukemia_detected", user)
    with sessions() as session, pytest.raises(AppendOnlyError):
        row = session.scalars(select(SpecimenSignoff)).one()
        row.comment = "rewritten"
        session.flush()
    for statement in ("UPDATE specimen_signoff SET comment = 'x'", "DELETE FROM specimen_signoff"):
        with sessions.begin() as session, pytest.raises(Exception, match="append-only"):
            session.execute(text(statement))
    with sessions() as session:
        assert load_specimen(session, "S-1").latest_signoff is not None


def test_review_queue_shows_one_specimen_at_a_time(app, db_settings):
    _seed_specimen(db_settings, [0.9, 0.8], "S-1")
    _seed_specimen(db_settings, [0.95], "S-2")
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    items = reviewer.get("/api/v1/review/queue?specimen=S-1").json["items"]
    assert [(i["specimen_id"], i["p_leukemia"]) for i in items] == [("S-1", 0.9), ("S-1", 0.8)]


def test_specimen_pages_list_show_and_sign(app, db_settings):
    ids = _seed_specimen(db_settings, [0.9, 0.2])
    browser = browser_login(app, db_settings.database_url, "path", "reviewer")
    listing = browser.get("/specimens")
    assert listing.status_code == 200 and "S-1" in listing.text
    assert "wait for a pathologist" in listing.text
    page = browser.get("/specimens/S-1")
    assert "awaiting decision" in page.text and "sign-form" not in page.text
    with session_factory(engine_for(db_settings.database_url)).begin() as session:
        from db.accounts import find_user

        user = find_user(session, "path")
        assert user is not None
        record_decision(session, ids[0], "confirmed", user, EVERY_LAB)
    page = browser.get("/specimens/S-1")
    assert "sign-form" in page.text
    resp = browser.post(
        "/specimens/S-1/sign",
        data={
            "csrf_token": csrf_token(page.text),
            "interpretation": "leukemia_suspected",
            "comment": "",
        },
    )
    assert resp.status_code == 302
    page = browser.get("/specimens/S-1")
    assert "Leukemia suspected — signed by path" in page.text
    assert "Amend the sign-off" in page.text


@pytest.fixture
def up(tmp_path: Path) -> Path:
    """The folder a laboratory submits (beside, not around, the test's var folder)."""
    folder = tmp_path / "upload"
    folder.mkdir()
    return folder


class _HttpOverFlask:
    """A requests session over the Flask test client, for ``leukoscreen submit``."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self.client, self.headers, self.sent = client, {}, []

    def post(self, url, files, data, headers, timeout):  # type: ignore[no-untyped-def]
        form: dict[str, object] = dict(data)
        for field, (label, fh, _) in files:
            form.setdefault(field, []).append((io.BytesIO(fh.read()), label))  # type: ignore[union-attr]
        self.sent.append(form)
        response = self.client.post(
            url.removeprefix("http://api"),
            data=form,
            content_type="multipart/form-data",
            headers=headers,
        )
        wrapped = requests.Response()
        wrapped.status_code, wrapped._content = response.status_code, response.data
        return wrapped


def _submit(client, monkeypatch, folder, *extra: str) -> tuple[int, _HttpOverFlask]:  # type: ignore[no-untyped-def]
    from leukoscreen import submit
    from leukoscreen.cli import build_parser

    http = _HttpOverFlask(client)
    monkeypatch.setattr(submit.requests, "Session", lambda: http)
    args = build_parser().parse_args(
        [
            "submit",
            str(folder),
            "--url",
            "http://api",
            "--token",
            "t",
            "--part-files",
            "2",
            *extra,
        ]
    )
    return submit.run_submit(args), http


def test_submit_sends_each_part_its_share_of_the_folders_manifest(
    client, db_settings, make_jpeg, up, monkeypatch
):
    for i, folder in enumerate(["S-1", "S-1", "S-2", "S-2", "S-3"]):
        (up / folder).mkdir(exist_ok=True)
        (up / folder / f"f{i}.jpg").write_bytes(make_jpeg(i))
    rows = [f"S-{1 + i // 2}/f{i}.jpg,ACC-{1 + i // 2}," for i in range(4)] + ["f4.jpg,ACC-3,"]
    (up / "manifest.csv").write_bytes(csv_manifest(*rows))
    code, http = _submit(client, monkeypatch, up)
    assert code == 0
    assert len(http.sent) == 3 and all("manifest" in form for form in http.sent)
    batch_id = client.get("/api/v1/batches").json["batches"][0]["id"]
    found = {r["file_name"]: r["specimen_id"] for r in export(client, batch_id)}
    assert found == {
        "S-1/f0.jpg": "ACC-1",
        "S-1/f1.jpg": "ACC-1",
        "S-2/f2.jpg": "ACC-2",
        "S-2/f3.jpg": "ACC-2",
        "S-3/f4.jpg": "ACC-3",
    }


def test_submit_checks_the_manifest_before_sending_anything(
    client, make_jpeg, up, monkeypatch, capsys
):
    (up / "a.jpg").write_bytes(make_jpeg(1))
    (up / "b.jpg").write_bytes(make_jpeg(2))
    (up / "manifest.csv").write_bytes(csv_manifest("a.jpg,S-1,"))
    code, http = _submit(client, monkeypatch, up)
    assert code == 2 and http.sent == []
    assert "b.jpg is not in the manifest" in capsys.readouterr().err


def test_submit_with_specimen_folders(client, make_jpeg, up, monkeypatch):
    (up / "S-5").mkdir()
    (up / "S-5" / "a.jpg").write_bytes(make_jpeg(1))
    code, http = _submit(client, monkeypatch, up, "--specimen-folders")
    assert code == 0 and http.sent[0]["specimen_folders"] == "1"
    assert client.get("/api/v1/specimens/S-5").json["counts"]["images"] == 1


def test_an_undone_decision_leaves_the_specimen_waiting_and_unsignable(app, db_settings):
    ids = _seed_specimen(db_settings, [0.9, 0.1], specimen="S-UNDO")
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    assert reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed"}).json
    assert reviewer.get("/api/v1/specimens/S-UNDO").json["status"] == "ready_to_sign"
    assert reviewer.post(f"/api/v1/images/{ids[0]}/reviews/1/undo").status_code == 201
    spec = reviewer.get("/api/v1/specimens/S-UNDO").json
    assert spec["status"] == SpecimenStatus.NEEDS_REVIEW
    assert spec["counts"]["awaiting_decision"] == 1
    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert [s["status"] for s in listed if s["specimen_id"] == "S-UNDO"] == ["needs_review"]
    refused = reviewer.post(
        "/api/v1/specimens/S-UNDO/signoffs", json={"interpretation": "leukemia_suspected"}
    )
    assert refused.status_code == 409 and "1 image(s) still wait" in refused.json["error"]


def test_a_second_opinion_request_leaves_the_specimen_waiting_and_unsignable(app, db_settings):
    # "Second opinion" says nothing about leukemia: the image still waits for a decision, so
    # the specimen must not be signed (least of all "no leukemia") on the strength of it.
    ids = _seed_specimen(db_settings, [0.9, 0.1], specimen="S-2ND")
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    asked = reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "second_opinion"})
    assert asked.status_code == 201
    spec = reviewer.get("/api/v1/specimens/S-2ND").json
    assert spec["status"] == SpecimenStatus.NEEDS_REVIEW
    assert spec["counts"]["awaiting_decision"] == 1
    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert [s["status"] for s in listed if s["specimen_id"] == "S-2ND"] == ["needs_review"]
    refused = reviewer.post(
        "/api/v1/specimens/S-2ND/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert refused.status_code == 409 and "1 image(s) still wait" in refused.json["error"]
    # The specimen page leads to that field: the unreviewed queue no longer lists it.
    page = reviewer.get("/specimens/S-2ND").get_data(as_text=True)
    status = page.split('id="specimen-status"')[1].split("</p>")[0]
    assert "state=second_opinion" in status and "Give the 1 second opinion(s)" in status
    assert "image(s) waiting" not in status
    queue = reviewer.get("/api/v1/review/queue?specimen=S-2ND&state=second_opinion").json
    assert [i["image_id"] for i in queue["items"]] == [ids[0]]
    decided = reviewer.post(
        f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed", "expected_seq": 1}
    )
    assert decided.status_code == 201
    assert reviewer.get("/api/v1/specimens/S-2ND").json["status"] == "ready_to_sign"


def test_a_specimen_with_a_leukemia_field_cannot_be_signed_negative(app, db_settings):
    ids = _seed_specimen(db_settings, [0.9, 0.1], specimen="S-POS")
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    assert (
        reviewer.post(f"/api/v1/images/{ids[0]}/reviews", json={"decision": "confirmed"})
    ).status_code == 201
    negative = reviewer.post(
        "/api/v1/specimens/S-POS/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert negative.status_code == 409, negative.json
    assert str(ids[0]) in negative.json["error"]
    assert reviewer.get("/api/v1/specimens/S-POS").json["signoffs"] == []
    assert reviewer.get("/api/v1/specimens/S-POS/fhir").status_code == 409  # nothing reported
    positive = reviewer.post(
        "/api/v1/specimens/S-POS/signoffs", json={"interpretation": "leukemia_suspected"}
    )
    assert positive.status_code == 201, positive.json
    # Nor can an amendment turn it negative while the field stays leukemia.
    amend = reviewer.post(
        "/api/v1/specimens/S-POS/signoffs",
        json={
            "interpretation": "no_leukemia_detected",
            "amends_id": positive.json["signoff_id"],
            "comment": "typo",
        },
    )
    assert amend.status_code == 409


def test_a_cleared_field_overturned_to_leukemia_in_qc_makes_the_specimen_not_negative(
    app, db_settings
):
    ids = _seed_specimen(db_settings, [0.1, 0.2], specimen="S-QC")
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    assert (
        reviewer.post(f"/api/v1/images/{ids[1]}/reviews", json={"decision": "overturned"})
    ).status_code == 201
    negative = reviewer.post(
        "/api/v1/specimens/S-QC/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert negative.status_code == 409


@pytest.mark.parametrize(
    ("state", "name", "error"),
    [("failed", "broken.jpg", "cannot decode"), ("rejected", "truncated.jpg", "not an image")],
)
def test_a_specimen_with_a_field_never_examined_cannot_be_signed_negative(
    app, db_settings, state, name, error
):
    # A field that failed scoring, or a file rejected at intake, was never examined.
    _seed_specimen(db_settings, [0.1], specimen="S-FAIL")
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        batch = s.scalars(select(Batch).order_by(Batch.created_at.desc())).first()
        assert batch is not None
        s.add(
            Image(
                batch_id=batch.id,
                sha256="f" * 64,
                original_name=name,
                storage_key="f" * 64,
                size_bytes=1,
                state=state,
                error=error,
                specimen_id="S-FAIL",
            )
        )
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    assert reviewer.get("/api/v1/specimens/S-FAIL").json["status"] == "ready_to_sign"
    negative = reviewer.post(
        "/api/v1/specimens/S-FAIL/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert negative.status_code == 409, negative.json
    assert name in negative.json["error"]
    inadequate = reviewer.post(
        "/api/v1/specimens/S-FAIL/signoffs", json={"interpretation": "inadequate_sample"}
    )
    assert inadequate.status_code == 201, inadequate.json


def test_a_failed_field_sent_again_and_scored_no_longer_blocks_a_negative_sign_off(
    app, db_settings
):
    _, (resent,) = seed_scored(db_settings.database_url, [0.1])
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        again = s.get(Image, resent)
        assert again is not None
        again.specimen_id = "S-AGAIN"
        batch = Batch(name="first try", submitted_by="tests", laboratory_id=DEFAULT_LAB_ID)
        s.add(
            Image(
                batch=batch,
                sha256=again.sha256,
                original_name="field.jpg",
                size_bytes=1,
                state="failed",
                error="worker lost",
                specimen_id="S-AGAIN",
            )
        )
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    negative = reviewer.post(
        "/api/v1/specimens/S-AGAIN/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert negative.status_code == 201, negative.json


def test_a_field_sent_twice_for_two_specimens_counts_its_score_in_both(app, db_settings):
    # Identical bytes in one batch are scored once: the second file is a ``duplicate`` of the
    # first. When the two files name different specimens, the second specimen's field is still
    # the flagged field, so it waits for the decision like the first one does.
    twin_id = _seed_specimen(db_settings, [0.9], specimen="S-TWIN")[0]
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        twin = s.get(Image, twin_id)
        assert twin is not None
        copy = Image(
            batch_id=twin.batch_id,
            sha256=twin.sha256,
            original_name="again.jpg",
            storage_key=twin.storage_key,
            size_bytes=1,
            state="duplicate",
            duplicate_of_id=twin.id,
            error="the same bytes as cell_000.jpg",
            specimen_id="S-COPY",
        )
        s.add(copy)
        s.flush()
        copy_id = copy.id
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    spec = reviewer.get("/api/v1/specimens/S-COPY").json
    assert spec["status"] == "needs_review"
    assert [(i["image_id"], i["route"], i["p_leukemia"]) for i in spec["images"]] == [
        (copy_id, "flagged", 0.9)
    ]
    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert {s["specimen_id"]: s["status"] for s in listed}["S-COPY"] == "needs_review"
    refused = reviewer.post(
        "/api/v1/specimens/S-COPY/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert refused.status_code == 409
    # One decision on the content decides both copies.
    assert (
        reviewer.post(f"/api/v1/images/{twin_id}/reviews", json={"decision": "confirmed"})
    ).status_code == 201
    assert reviewer.get("/api/v1/specimens/S-COPY").json["status"] == "ready_to_sign"
    assert (
        reviewer.post(
            "/api/v1/specimens/S-COPY/signoffs", json={"interpretation": "no_leukemia_detected"}
        ).status_code
        == 409
    )


def test_a_duplicate_whose_twin_is_still_scoring_keeps_its_specimen_scoring(app, db_settings):
    twin_id = _seed_specimen(db_settings, [0.2], specimen="S-WAIT")[0]
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        twin = s.get(Image, twin_id)
        assert twin is not None
        twin.state = "scoring"  # as if its score were not in yet (direct write: a fixture)
        s.add(
            Image(
                batch_id=twin.batch_id,
                sha256=twin.sha256,
                original_name="again.jpg",
                storage_key=twin.storage_key,
                size_bytes=1,
                state="duplicate",
                duplicate_of_id=twin.id,
                specimen_id="S-WAIT-COPY",
            )
        )
    reviewer = token_client(app, db_settings.database_url, "path", "reviewer")
    assert reviewer.get("/api/v1/specimens/S-WAIT-COPY").json["status"] == "scoring"
    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert {s["specimen_id"]: s["status"] for s in listed}["S-WAIT-COPY"] == "scoring"
    refused = reviewer.post(
        "/api/v1/specimens/S-WAIT-COPY/signoffs", json={"interpretation": "no_leukemia_detected"}
    )
    assert refused.status_code == 409
