"""The priority lane: /single's one image and small new batches go to a queue that every scoring
worker takes from first, so they do not wait behind a bulk backlog. (Its latency under a large
batch is measured by `leukoscreen bench`, printed, never asserted.)"""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from api import create_app
from leukoscreen.cli import _worker, build_parser
from tests.conftest import smear_like_jpeg, token_client
from tests.test_structured_logs import RecordingCelery
from worker.celery_app import PRIORITY_QUEUE, SCORE_TASK, make_celery


def _files(n: int, seed: int = 0) -> list:
    return [(io.BytesIO(smear_like_jpeg(seed + i)), f"s{seed + i}.jpg") for i in range(n)]


def _queues(celery: RecordingCelery) -> set[str]:
    return {task["queue"] for task in celery.sent}


def test_one_image_and_small_new_batches_take_the_priority_lane(db_settings):
    celery = RecordingCelery()
    settings = replace(db_settings, priority_max_images=3)
    client = token_client(create_app(settings, celery=celery), settings.database_url)

    single = client.post("/api/v1/batches", data={"images": _files(1)})
    assert single.status_code == 202 and _queues(celery) == {PRIORITY_QUEUE}

    celery.sent.clear()
    small = client.post("/api/v1/batches", data={"images": _files(3, 10)})
    assert small.status_code == 202 and _queues(celery) == {PRIORITY_QUEUE}

    celery.sent.clear()
    bulk = client.post("/api/v1/batches", data={"images": _files(4, 20)})
    assert bulk.status_code == 202 and _queues(celery) == {"cpu"}

    # A part added to a batch is bulk work, however small the part.
    celery.sent.clear()
    added = client.post(
        f"/api/v1/batches/{bulk.json['batch_id']}/images", data={"images": _files(1, 30)}
    )
    assert added.status_code == 202 and _queues(celery) == {"cpu"}


def test_a_zero_limit_turns_the_lane_off(db_settings):
    celery = RecordingCelery()
    settings = replace(db_settings, priority_max_images=0)
    client = token_client(create_app(settings, celery=celery), settings.database_url)
    assert client.post("/api/v1/batches", data={"images": _files(1)}).status_code == 202
    assert _queues(celery) == {"cpu"}


@pytest.mark.parametrize(
    ("argv", "queues"),
    [
        # Heatmaps (``explain``) last: a backlog of any other queue goes first.
        (["worker"], "priority,cpu,explain"),
        (["worker", "--queue", "gpu", "--concurrency", "1"], "priority,gpu,explain"),
        (["worker", "--beat"], "priority,cpu,reconcile,webhooks,explain"),
        (["worker", "--queue", "reconcile"], "reconcile,webhooks"),
    ],
)
def test_every_scoring_worker_consumes_the_priority_lane_first(monkeypatch, argv, queues):
    from worker import celery_app

    started: list[list[str]] = []
    monkeypatch.setattr(celery_app.app, "worker_main", started.append)
    monkeypatch.setenv("LEUKOSCREEN_GPU_COUNT", "1")
    assert _worker(build_parser("worker").parse_args(argv)) == 0
    (args,) = started
    assert args[args.index("-Q") + 1] == queues


def consume_in_order(app, queue_names: list[str], n: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """The first id of each of ``n`` tasks as one worker consuming ``queue_names`` (in that
    order, as ``leukoscreen worker`` passes them) receives them."""
    from kombu import Consumer

    received: list[list[int]] = []
    with app.connection_for_read() as conn:
        queues = [app.amqp.queues[name] for name in queue_names]

        def take(body, message):  # type: ignore[no-untyped-def]
            received.append(body[0][0])
            message.ack()

        with Consumer(conn, queues=queues, callbacks=[take], prefetch_count=1):
            while len(received) < n:
                conn.drain_events(timeout=5)
    return received


@pytest.mark.redis
def test_redis_hands_out_the_priority_lane_before_a_backlog(settings, redis_url):

    app = make_celery(replace(settings, broker_url=redis_url))
    for i in range(3):
        app.send_task(SCORE_TASK, args=[[i]], queue="cpu")
    for i in range(3):
        app.send_task(SCORE_TASK, args=[[100 + i]], queue=PRIORITY_QUEUE)
    received = consume_in_order(app, [PRIORITY_QUEUE, "cpu"], 6)
    # Kombu's default round robin would alternate the two queues ([100], [0], [101], ...).
    assert received == [[100], [101], [102], [0], [1], [2]]
