"""Worker heartbeats: every pool process records itself where the API can read it."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from db.models import WorkerHeartbeat
from db.session import engine_for, session_factory
from db.workers import Beat, forget, list_workers, queue_presence, record_beat, stall_message
from worker.heartbeat import Heartbeat, Identity

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _beat(pid: int = 100, queues: tuple[str, ...] = ("cpu",), **kw) -> Beat:  # type: ignore[no-untyped-def]
    values = dict(
        node=f"cpu-{pid}@lab1",
        host="lab1",
        pid=pid,
        queues=list(queues),
        concurrency=2,
        model_name="lenet_lld_bn",
        model_version="ab" * 32,
        started_at=NOW - timedelta(minutes=5),
        last_task_at=None,
        images_last_minute=0,
    )
    values.update(kw)
    return Beat(**values)  # type: ignore[arg-type]


def test_a_process_refreshes_its_one_row_and_goes_stale_when_silent(db_settings):
    sessions = session_factory(engine_for(db_settings.database_url))
    record_beat(sessions, _beat(images_last_minute=3), NOW - timedelta(seconds=30))
    record_beat(sessions, _beat(images_last_minute=64), NOW)
    record_beat(sessions, _beat(pid=200), NOW - timedelta(minutes=3))
    with sessions() as s:
        assert s.scalars(select(WorkerHeartbeat.pid).order_by(WorkerHeartbeat.pid)).all() == [
            100,
            200,
        ]
        workers = list_workers(s, NOW, stale_after_s=60)
    live, silent = workers
    assert (live.pid, live.stale, live.images_last_minute) == (100, False, 64)
    assert live.queues == ["cpu"] and live.concurrency == 2 and live.model_name == "lenet_lld_bn"
    assert (silent.pid, silent.stale) == (200, True)
    assert live.as_dict(NOW)["last_beat_age_s"] == 0.0


def test_a_clean_shutdown_removes_the_row_and_a_day_of_silence_forgets_it(db_settings):
    sessions = session_factory(engine_for(db_settings.database_url))
    record_beat(sessions, _beat(pid=1), NOW - timedelta(days=2))
    record_beat(sessions, _beat(pid=2), NOW)
    record_beat(sessions, _beat(pid=3), NOW)
    forget(sessions, "lab1", 3)
    with sessions() as s:
        assert [w.pid for w in list_workers(s, NOW, 60)] == [2]


def test_presence_counts_live_processes_per_queue():
    rows = [
        _beat(pid=1, queues=("cpu", "reconcile")),
        _beat(pid=2, queues=("gpu",), last_task_at=NOW - timedelta(seconds=5)),
    ]
    with_stale = [
        *(_view(b, stale=False) for b in rows),
        _view(_beat(pid=3, queues=("cpu",)), stale=True),
    ]
    presence = queue_presence(with_stale, ["cpu", "gpu", "priority"])
    assert presence["cpu"].processes == 1 and presence["reconcile"].processes == 1
    assert presence["gpu"].last_task_at == NOW - timedelta(seconds=5)
    assert presence["priority"].processes == 0


def _view(beat: Beat, stale: bool):  # type: ignore[no-untyped-def]
    from db.workers import WorkerView

    return WorkerView(
        **vars(beat),
        last_beat_at=NOW - timedelta(seconds=120 if stale else 2),
        stale=stale,
    )


def test_stall_is_reported_without_a_live_worker_or_when_none_takes_work():
    nobody = queue_presence([_view(_beat(pid=3), stale=True)], ["cpu"])
    # No live worker: stalled at once, however fresh the work.
    message = stall_message(nobody, ["cpu"], NOW, 120, oldest_queued_age_s=1)
    assert message and "No worker is taking images from queue cpu" in message
    assert "last seen 2 minutes ago" in message
    idle = queue_presence([_view(_beat(last_task_at=NOW - timedelta(minutes=10)), False)], ["cpu"])
    message = stall_message(idle, ["cpu"], NOW, 120, oldest_queued_age_s=600)
    assert message and "none has taken an image for 10 minutes" in message
    recent = queue_presence([_view(_beat(last_task_at=NOW - timedelta(seconds=3)), False)], ["cpu"])
    assert stall_message(recent, ["cpu"], NOW, 120, oldest_queued_age_s=600) is None


def test_an_idle_worker_is_not_stalled_by_work_that_just_arrived_or_while_it_works():
    long_idle = _beat(last_task_at=NOW - timedelta(hours=3))
    idle = queue_presence([_view(long_idle, False)], ["cpu"])
    # A batch queued 5 s ago: the worker may still be loading its model for it.
    assert stall_message(idle, ["cpu"], NOW, 120, oldest_queued_age_s=5) is None
    working = replace(long_idle, task_started_at=NOW - timedelta(seconds=30))
    busy = queue_presence([_view(working, False)], ["cpu"])
    assert busy["cpu"].busy == 1
    assert stall_message(busy, ["cpu"], NOW, 120, oldest_queued_age_s=600) is None


def test_the_heartbeat_thread_writes_counts_and_removes_its_row_on_stop(db_settings):
    sessions = session_factory(engine_for(db_settings.database_url))
    beat = Heartbeat(
        sessions,
        Identity(node="cpu-1@lab1", queues=["cpu"], concurrency=1),
        "lab1",
        every_s=0.05,
        model_info=lambda: ("m", "v" * 64),
    )
    beat.task_done(64)
    beat.task_done(10)
    beat.task_done(0)
    assert beat.images_last_minute() == 74
    beat.task_started()
    beat.start()
    try:
        deadline = time.monotonic() + 30
        row = None
        while row is None and time.monotonic() < deadline:
            with sessions() as s:
                row = s.scalar(select(WorkerHeartbeat))
            time.sleep(0.05)
        assert row is not None
        assert (row.node, row.images_last_minute, row.model_name) == ("cpu-1@lab1", 74, "m")
        assert row.last_task_at is not None and row.task_started_at is not None
        beat.task_done(1)
        while row.task_started_at is not None and time.monotonic() < deadline:
            with sessions() as s:
                row = s.scalar(select(WorkerHeartbeat))
            time.sleep(0.05)
        assert row.task_started_at is None and row.images_last_minute == 75
    finally:
        beat.stop()
    with sessions() as s:
        assert s.scalar(select(WorkerHeartbeat)) is None
