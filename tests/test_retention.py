"""Retention: old pixels go, results, decisions, sign-offs, exports and the audit trail stay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from api import create_app
from db.models import AuditEvent, Image, SpecimenSignoff
from db.retention import purge_old_images
from db.session import engine_for, session_factory
from leukoscreen.cli import main
from leukoscreen.storage import ContentStore
from tests.conftest import smear_like_jpeg, token_client
from tests.lisdata import scored_specimen, sign_specimen
from tests.reviewdata import seed_scored
from worker.celery_app import PURGE_TASK, make_celery


def _age(database_url: str, image_ids: list[int], days: int) -> None:
    with session_factory(engine_for(database_url)).begin() as s:
        s.execute(
            update(Image)
            .where(Image.id.in_(image_ids))
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


def _exports(client, batch_id: str, specimen_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "csv": client.get(f"/api/v1/batches/{batch_id}/results?format=csv").get_data(as_text=True),
        "json": client.get(f"/api/v1/batches/{batch_id}/results?format=json").get_data(
            as_text=True
        ),
        "fhir": client.get(f"/api/v1/specimens/{specimen_id}/fhir").get_data(as_text=True),
    }


def test_purge_removes_old_pixels_and_leaves_exports_sign_offs_and_the_audit_trail(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    client = token_client(app, url)
    store = ContentStore(db_settings.storage_dir)
    blobs = [smear_like_jpeg(11), smear_like_jpeg(12)]
    batch_id, image_ids = scored_specimen(
        url, "S-300", [0.9, 0.2], storage_dir=db_settings.storage_dir, blobs=blobs
    )
    sign_specimen(url, "S-300", "leukemia_suspected")
    _age(url, image_ids, days=40)
    sessions = session_factory(engine_for(url))
    with sessions() as s:
        audit_before = s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
        keys = s.scalars(select(Image.storage_key).where(Image.id.in_(image_ids))).all()
    before = _exports(client, batch_id, "S-300")

    report = purge_old_images(sessions, store, 30, None)

    assert (report.images, report.files_removed, report.files_kept_shared) == (2, 2, 0)
    assert report.bytes_freed == sum(len(b) for b in blobs)
    assert not any(store.exists(k) for k in keys if k)
    gone = client.get(f"/api/v1/images/{image_ids[0]}")
    assert gone.status_code == 410 and "image purged" in gone.json["error"]
    assert _exports(client, batch_id, "S-300") == before
    with sessions() as s:
        assert all(s.get(Image, i).purged_at for i in image_ids)
        assert s.scalar(select(SpecimenSignoff.specimen_id)) == "S-300"
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [e.id for e in events[: len(audit_before)]] == list(audit_before)
    (purge,) = events[len(audit_before) :]
    assert purge.action == "retention.purge"
    assert (purge.details["images"], purge.details["files_removed"]) == (2, 2)

    again = purge_old_images(sessions, store, 30, None)
    assert again.images == 0
    with sessions() as s:
        assert s.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc())) == purge.id


def test_a_stored_file_shared_with_a_newer_image_is_kept(db_settings):
    url = db_settings.database_url
    client = token_client(create_app(db_settings), url)
    store = ContentStore(db_settings.storage_dir)
    same = smear_like_jpeg(21)
    _, (old,) = seed_scored(url, [0.1], storage_dir=db_settings.storage_dir, blobs=[same])
    _, (new,) = seed_scored(url, [0.1], storage_dir=db_settings.storage_dir, blobs=[same])
    _age(url, [old], days=40)

    report = purge_old_images(session_factory(engine_for(url)), store, 30, None)

    assert (report.images, report.files_removed, report.files_kept_shared) == (1, 0, 1)
    assert client.get(f"/api/v1/images/{old}").status_code == 410
    assert client.get(f"/api/v1/images/{new}").status_code == 200


def test_a_dry_run_and_a_zero_retention_change_nothing(db_settings):
    url = db_settings.database_url
    store = ContentStore(db_settings.storage_dir)
    _, image_ids = seed_scored(url, [0.1], storage_dir=db_settings.storage_dir, blobs=[b"x" * 10])
    _age(url, image_ids, days=400)
    sessions = session_factory(engine_for(url))

    dry = purge_old_images(sessions, store, 30, None, dry_run=True)
    forever = purge_old_images(sessions, store, 0, None)

    assert (dry.images, dry.files_removed, dry.bytes_freed) == (1, 1, 10)
    assert forever.images == 0 and forever.cutoff is None
    with sessions() as s:
        assert s.get(Image, image_ids[0]).purged_at is None
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.action == "retention.purge")) is None
    client = token_client(create_app(db_settings), url)
    assert client.get(f"/api/v1/images/{image_ids[0]}").status_code == 200


@pytest.mark.parametrize("db_settings", ["sqlite"], indirect=True)
def test_leukoscreen_purge_reads_the_retention_setting(db_settings, monkeypatch, capsys):
    url = db_settings.database_url
    _, image_ids = seed_scored(url, [0.1], storage_dir=db_settings.storage_dir, blobs=[b"y" * 5])
    _age(url, image_ids, days=10)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("LEUKOSCREEN_STORAGE_DIR", str(db_settings.storage_dir))
    monkeypatch.setenv("LEUKOSCREEN_RETAIN_IMAGES_DAYS", "7")

    assert main(["purge", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert main(["purge"]) == 0
    done = json.loads(capsys.readouterr().out)

    assert (dry["dry_run"], dry["images"], done["images"], done["bytes_freed"]) == (True, 1, 1, 5)
    with session_factory(engine_for(url))() as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "retention.purge"))
    assert event is not None and event.actor_name.startswith("cli:")


def test_the_beat_schedule_runs_the_purge(settings):
    schedule = make_celery(settings).conf.beat_schedule
    assert any(entry["task"] == PURGE_TASK for entry in schedule.values())
