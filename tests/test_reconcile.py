from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from db.models import Batch, Image
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from worker.celery_app import make_celery
from worker.reconcile import reconcile


def _image(batch, state, **kw):
    return Image(
        batch=batch,
        sha256="a" * 64,
        original_name="x.jpg",
        storage_key="a" * 64,
        size_bytes=1,
        state=state,
        **kw,
    )


def test_reconciler_requeues_lost_and_stuck_work_and_gives_up_on_poison(db_settings):
    settings = replace(db_settings, stale_after_s=60, max_attempts=3)
    sessions = session_factory(engine_for(settings.database_url))
    old = datetime.now(UTC) - timedelta(hours=1)
    with sessions.begin() as s:
        b = Batch(name="t", submitted_by="t", laboratory_id=DEFAULT_LAB_ID)
        images = {
            "stuck": _image(b, "scoring", attempts=1, updated_at=old),
            "poison": _image(b, "scoring", attempts=3, updated_at=old),
            "lost": _image(b, "queued", enqueued_at=old, created_at=old),
            "never_sent": _image(b, "queued", created_at=old),
            "fresh": _image(b, "queued", enqueued_at=datetime.now(UTC)),
            "busy": _image(b, "scoring", attempts=1, updated_at=datetime.now(UTC)),
            "done": _image(b, "scored", updated_at=old),
        }
        s.add_all(images.values())
        s.flush()
        ids = {k: v.id for k, v in images.items()}
    report = reconcile(make_celery(settings), sessions, settings)
    assert report.requeued_from_scoring == 1 and report.failed_exhausted == 1
    assert report.enqueued == 3  # stuck, lost, never_sent
    with sessions() as s:
        state = {k: s.get(Image, i).state for k, i in ids.items()}
        enqueued = {k: s.get(Image, i).enqueued_at for k, i in ids.items()}
    assert state == {
        "stuck": "queued",
        "poison": "failed",
        "lost": "queued",
        "never_sent": "queued",
        "fresh": "queued",
        "busy": "scoring",
        "done": "scored",
    }
    assert all(enqueued[k] > old for k in ("stuck", "lost", "never_sent"))
    messages = list(settings.broker_dir.glob("*.msg"))
    assert len(messages) == 1  # 3 ids fit one chunk


def test_reconciler_does_nothing_when_all_is_fresh(db_settings):
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions.begin() as s:
        s.add(
            _image(
                Batch(name="t", submitted_by="t", laboratory_id=DEFAULT_LAB_ID),
                "queued",
                enqueued_at=datetime.now(UTC),
            )
        )
    report = reconcile(make_celery(db_settings), sessions, db_settings)
    assert report.enqueued == 0 and report.requeued_from_scoring == 0
    assert list(db_settings.broker_dir.glob("*.msg")) == []
