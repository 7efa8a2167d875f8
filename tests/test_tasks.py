from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import worker.tasks as tasks
from db.models import Batch, Image
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID


@dataclass
class _Runtime:
    sessions: object
    settings: object
    store: object = None
    model: object = None
    version_id: int = 1
    decode_pool: object = None


def test_transient_database_errors_are_retried_then_recorded_as_failed(db_settings, monkeypatch):
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions.begin() as s:
        image = Image(
            batch=Batch(name="t", submitted_by="t", laboratory_id=DEFAULT_LAB_ID),
            sha256="a" * 64,
            original_name="a.jpg",
            storage_key="a" * 64,
            size_bytes=1,
        )
        s.add(image)
        s.flush()
        image_id = image.id
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(tasks, "runtime", lambda: _Runtime(sessions, db_settings))
    monkeypatch.setattr(tasks, "score_chunk", flaky)
    result = tasks.score_images.apply(args=[[image_id]])
    assert result.failed()
    assert len(calls) == tasks.MAX_RETRIES + 1  # the first try and every retry
    with sessions() as s:
        stored = s.scalars(select(Image)).one()
        assert stored.state == "failed"
        assert "server closed the connection" in stored.error


def test_scoring_task_is_configured_for_at_least_once_delivery():
    conf = tasks.app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert tasks.score_images.max_retries == tasks.MAX_RETRIES


def test_gpu_count_reaches_the_pool_processes_through_the_settings(settings, monkeypatch):
    """`leukoscreen worker --queue gpu` counts the cards once; each forked child pins one."""
    import os
    from types import SimpleNamespace

    from leukoscreen import cli
    from worker import celery_app, runtime

    for name in ("LEUKOSCREEN_GPU_COUNT", "CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEUKOSCREEN_VAR_DIR", str(settings.var_dir))
    monkeypatch.setattr(runtime, "_settings", None)
    monkeypatch.setattr(cli, "_count_gpus", lambda: 3)
    started: list[list[str]] = []
    monkeypatch.setattr(celery_app.app, "worker_main", started.append)
    assert cli.main(["worker", "--queue", "gpu"]) == 0
    assert started[0][started[0].index("--concurrency") + 1] == "3"
    assert runtime.worker_settings().gpu_count == 3
    assert "LEUKOSCREEN_GPU_COUNT" not in os.environ
    # What a forked pool process does first: pool process 4 of 3 cards gets card 1.
    monkeypatch.setattr(tasks, "current_process", lambda: SimpleNamespace(index=4))
    tasks._pin_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
