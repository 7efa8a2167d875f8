"""The reconciler's runs have their own queue, consumed by its own worker in every served setup.

A scoring backlog on the cpu queue made beat's reconcile runs wait behind it and expire
(4 of them in 100 s): the one task that recovers lost work must not queue behind that work.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import yaml

from leukoscreen import serve
from tests.conftest import REPO
from worker.celery_app import (
    EXPLAIN_QUEUE,
    PRIORITY_QUEUE,
    RECONCILE_QUEUE,
    RECONCILE_TASK,
    SCORE_TASK,
    WEBHOOK_QUEUE,
    make_celery,
)


def _queued(broker_dir, queue: str) -> int:  # type: ignore[no-untyped-def]
    return len(list(broker_dir.glob(f"*.{queue}.msg")))


def test_beat_puts_reconcile_runs_beside_a_scoring_backlog_not_behind_it(settings):
    app = make_celery(settings)
    for i in range(50):
        app.send_task(SCORE_TASK, args=[[i]], queue=settings.default_queue)
    entry = app.conf.beat_schedule["reconcile-stale-images"]
    assert entry["task"] == RECONCILE_TASK
    app.send_task(entry["task"], **entry["options"])
    app.send_task(RECONCILE_TASK)  # `leukoscreen reconcile`-style sends are routed there too
    assert _queued(settings.broker_dir, settings.default_queue) == 50
    assert _queued(settings.broker_dir, RECONCILE_QUEUE) == 2


def test_serve_runs_a_reconcile_consumer_beside_the_scoring_worker(settings, monkeypatch):
    started: list[list[str]] = []

    class FakeChild:
        def __init__(self, argv: list[str], **_: object) -> None:
            started.append(argv)
            self.returncode = 0

        def poll(self) -> int:
            return 0

        def terminate(self) -> None: ...

        def wait(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(serve.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(serve, "load_settings", lambda: settings)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    assert serve.run_serve(argparse.Namespace(host="127.0.0.1", port=0)) == 0
    workers = [argv[3:] for argv in started if argv[3] == "worker"]
    assert ["worker", "--queue", "reconcile", "--beat"] in workers
    assert ["worker"] in workers  # the scoring worker (cpu) runs no schedule


def test_compose_has_a_reconcile_consumer():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    commands = {name: SimpleNamespace(argv=s.get("command", [])) for name, s in services.items()}
    consumers = [n for n, c in commands.items() if c.argv[-2:] == ["--queue", RECONCILE_QUEUE]]
    assert consumers == ["reconciler"]
    assert commands["beat"].argv == ["leukoscreen", "beat"]


def test_a_worker_with_the_schedule_also_runs_the_reconciler(monkeypatch):
    from leukoscreen.cli import main
    from worker.celery_app import app

    argvs: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", lambda argv: argvs.append(argv))
    assert main(["worker", "--beat"]) == 0
    assert main(["worker"]) == 0
    with_beat, plain = (argv[argv.index("-Q") + 1] for argv in argvs)
    # The housekeeping queues (reconciler, webhook sends) after the scoring ones, and the
    # heatmaps last of all.
    assert with_beat.split(",") == [
        PRIORITY_QUEUE,
        "cpu",
        RECONCILE_QUEUE,
        WEBHOOK_QUEUE,
        EXPLAIN_QUEUE,
    ]
    assert plain == f"{PRIORITY_QUEUE},cpu,{EXPLAIN_QUEUE}"  # the priority lane first
