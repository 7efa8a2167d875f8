"""A worker killed mid-delivery: the receiver gets the event again with the same delivery id."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.processes import ProcessGroup, project_env
from db import migrate
from db.lifecycle import emit
from db.models import WebhookDelivery, WebhookEvent
from db.session import engine_for, session_factory
from db.webhooks import create_webhook
from leukoscreen.config import resolve_secret_key
from worker.celery_app import make_celery
from worker.dispatch import enqueue_deliveries

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(300)]


def test_a_delivery_whose_worker_is_killed_mid_request_is_sent_again_under_its_id(
    settings, redis_url, tmp_path
):
    received: list[str] = []
    first_arrived, release = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.headers["X-LeukoScreen-Delivery"])
            if len(received) == 1:  # hold the first sender until it is killed
                first_arrived.set()
                release.wait(60)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = resolve_secret_key(replace(settings, broker_url=redis_url))
    migrate.upgrade(settings.database_url)
    sessions = session_factory(engine_for(settings.database_url))
    with sessions.begin() as s:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        create_webhook(s, url, ["batch.complete"], settings.secret_key, None)
        s.flush()
        (delivery_id,) = emit(s, WebhookEvent.BATCH_COMPLETE, "b/1", {"batch_id": "b"})
    env = project_env(
        DATABASE_URL=settings.database_url,
        BROKER_URL=redis_url,
        LEUKOSCREEN_VAR_DIR=str(settings.var_dir),
        # Redis hands an unacknowledged task to another worker after this many seconds.
        LEUKOSCREEN_VISIBILITY_TIMEOUT="3",
    )
    (tmp_path / "logs").mkdir()
    svc = ProcessGroup(env, tmp_path / "logs")
    try:
        first = svc.start("worker", "--queue", "reconcile", "--concurrency", "1", name="w1")
        assert enqueue_deliveries(make_celery(settings), [delivery_id]) == 1
        assert first_arrived.wait(120), svc.logs()
        svc.kill_group(first)  # kill -9 of the worker and its pool, mid-request
        svc.start("worker", "--queue", "reconcile", "--concurrency", "1", name="w2")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with sessions() as s:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                if row.state == "delivered":
                    break
            time.sleep(0.5)
        assert row.state == "delivered", svc.logs()
    finally:
        release.set()
        svc.stop_all()
        server.shutdown()
        server.server_close()
    # Sent twice under one id: a receiver that keeps the ids it has seen files it once.
    assert received == [delivery_id, delivery_id]
    assert row.attempts == 2
