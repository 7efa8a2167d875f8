"""Poison isolation: an image that kills every worker holding it fails alone.

A worker's death is simulated in-process: the scorer raises ``SystemExit`` (a BaseException,
like the process going away) when the poison image is in its batch, after the chunk was
claimed and before anything is stored. The broker is a list: a chunk whose worker died is
delivered again whole, as ``task_reject_on_worker_lost`` does, and groups that
``split_for_retry`` returns are sent as new tasks, as ``worker.tasks.score_images`` does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from sqlalchemy import func, select

from db.lifecycle import exhausted_error
from db.models import Image, Result
from db.session import engine_for, session_factory
from model.preprocess import prepare
from tests.test_scoring import FakeScorer, _seed
from worker.scoring import register_model_version, retry_group_size, score_chunk, split_for_retry


@dataclass
class KilledBy(FakeScorer):
    """Dies like a worker process whenever ``poison`` is among the images it is given."""

    poison: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def assess(self, images: np.ndarray):
        if any(np.array_equal(image, self.poison) for image in images):
            raise SystemExit("worker killed by the poison image")
        return super().assess(images)


def test_group_size_halves_per_loss_and_is_one_before_the_last_attempt():
    assert [retry_group_size(a, 64, 5) for a in range(6)] == [64, 32, 16, 8, 1, 1]
    assert [retry_group_size(a, 64, 2) for a in range(3)] == [64, 1, 1]


def test_only_the_image_that_kills_the_worker_ends_failed(db_settings, make_jpeg):
    chunk_size, max_attempts, poison_index = 16, 4, 11
    blobs = [make_jpeg(i) for i in range(chunk_size)]
    ids, store = _seed(db_settings, blobs)
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = KilledBy()
    assert scorer.gate is not None
    scorer.poison = prepare(blobs[poison_index], scorer.gate.hue_band).pixels
    version = register_model_version(sessions, scorer)

    broker: deque[list[int]] = deque([ids])
    deliveries = 0
    while broker:
        chunk = broker.popleft()
        deliveries += 1
        assert deliveries < 100, "the chunk never settled"
        groups = split_for_retry(sessions, chunk, chunk_size, max_attempts)
        if groups:
            broker.extend(groups)
            continue
        try:
            score_chunk(sessions, store, scorer, version, chunk, max_attempts)
        except SystemExit:
            broker.append(chunk)  # the worker died: the same message comes back whole

    with sessions() as s:
        states = {i: s.get(Image, i).state for i in ids}
        poison = s.get(Image, ids[poison_index])
        assert poison.error == exhausted_error(max_attempts)
        assert s.scalar(select(func.count()).select_from(Result)) == chunk_size - 1
    assert states == {i: "failed" if i == ids[poison_index] else "scored" for i in ids}


def test_the_task_sends_a_chunk_that_lost_workers_again_in_groups(db_settings, make_jpeg):
    import worker.tasks as tasks
    from tests.test_tasks import _Runtime

    settings = replace(db_settings, chunk_size=16, max_attempts=5)
    ids, _ = _seed(settings, [make_jpeg(i) for i in range(10)])
    sessions = session_factory(engine_for(settings.database_url))
    with sessions.begin() as s:  # two workers died holding this chunk: groups of 16 >> 2
        for i in ids:
            s.get(Image, i).attempts = 2
            s.get(Image, i).state = "scoring"
    sent: list[tuple[list[int], int]] = []

    def enqueue(celery, sessions, image_ids, chunk_size, queue):
        sent.append((list(image_ids), chunk_size))
        return len(image_ids)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks, "runtime", lambda: _Runtime(sessions, settings))
        mp.setattr(tasks, "enqueue_images", enqueue)
        mp.setattr(tasks, "score_chunk", lambda *a, **k: pytest.fail("scored the whole chunk"))
        assert tasks.score_images.apply(args=[ids]).get() == {"split": 3}
    assert sent == [(ids, 4)]
    with sessions() as s:
        assert {s.get(Image, i).state for i in ids} == {"queued"}
