"""Explanation heatmaps after scoring (issue 16, item 3): the task that makes them, the queue
they wait on, the reconciler that asks again, retention that removes them, and the route that
serves them."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, update

import worker.tasks as tasks
from db.models import Batch, Image, ModelVersion, Result
from db.retention import purge_old_images
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from leukoscreen.storage import ContentStore
from model.card import ModelCard
from tests.conftest import REPO, smear_like_jpeg
from tests.reviewdata import give_heatmap, seed_scored
from tests.test_priority_lane import consume_in_order
from tests.test_structured_logs import RecordingCelery
from tests.test_tasks import _Runtime
from worker.celery_app import EXPLAIN_QUEUE, EXPLAIN_TASK, make_celery
from worker.explain import explain_chunk
from worker.reconcile import HEATMAP_WINDOW, reconcile
from worker.scoring import ChunkOutcome

MINE, OTHER = "a" * 64, "b" * 64  # model versions: this worker's and another's


@dataclass
class FakeExplainer:
    """Heat where the image is red, so each stored overlay is checkable."""

    sha256: str = MINE
    card: ModelCard = field(default_factory=lambda: ModelCard("fake", 0.5, input_size=(224, 224)))
    calls: list[int] = field(default_factory=list)

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        red = images[..., 0]
        return red / red.max(axis=(1, 2), keepdims=True)


@dataclass
class World:
    sessions: object
    store: ContentStore
    version_id: int
    other_version_id: int
    ids: dict[str, int]


def _world(settings) -> World:  # type: ignore[no-untyped-def]
    """One image per case, each with its stored original and a result."""
    sessions = session_factory(engine_for(settings.database_url))
    store = ContentStore(settings.storage_dir)
    cases = {
        # name: (route, model version, purged)
        "flagged": ("flagged", MINE, False),
        "manual": ("manual_review", MINE, False),
        "cleared": ("cleared", MINE, False),
        "other_model": ("flagged", OTHER, False),
        "purged": ("flagged", MINE, True),
    }
    ids = {}
    with sessions.begin() as s:
        mine, other = (
            ModelVersion(sha256=MINE, name="m", threshold=0.5),
            ModelVersion(sha256=OTHER, name="o", threshold=0.5),
        )
        batch = Batch(name="h", submitted_by="t", laboratory_id=DEFAULT_LAB_ID)
        s.add_all([mine, other, batch])
        s.flush()
        for i, (name, (route, version, purged)) in enumerate(cases.items()):
            key = store.commit(store.stage(io.BytesIO(smear_like_jpeg(300 + i)), 10**7))
            image = Image(
                batch=batch,
                sha256=key,
                original_name=f"{name}.jpg",
                storage_key=key,
                size_bytes=1,
                state="scored",
                purged_at=datetime.now(UTC) if purged else None,
            )
            s.add(image)
            s.flush()
            s.add(
                Result(
                    image_id=image.id,
                    batch_id=batch.id,
                    model_version_id=(mine if version == MINE else other).id,
                    p_leukemia=0.9 if route == "flagged" else 0.1,
                    flagged=route != "cleared",
                    threshold=0.5,
                    route=route,
                )
            )
            ids[name] = image.id
        versions = (mine.id, other.id)
    return World(sessions, store, *versions, ids)  # type: ignore[arg-type]


def _keys(world: World) -> dict[str, str | None]:
    with world.sessions() as s:  # type: ignore[operator]
        rows = s.execute(select(Result.image_id, Result.heatmap_key)).all()
    by_image = {image_id: key for image_id, key in rows}
    return {name: by_image[i] for name, i in world.ids.items()}


def test_heatmaps_are_made_once_for_this_models_results_that_go_to_a_person(db_settings):
    world = _world(db_settings)
    explainer = FakeExplainer()
    ids = list(world.ids.values())

    outcome = explain_chunk(
        world.sessions, world.store, explainer, world.version_id, ids, ThreadPoolExecutor(2)
    )

    assert (outcome.made, outcome.failed, outcome.skipped) == (2, 0, 3)
    assert explainer.calls == [2]  # one Grad-CAM call for the chunk
    keys = _keys(world)
    # Flagged and manual review get one; cleared, another model's result and a purged image
    # do not.
    assert keys["flagged"] and keys["manual"]
    assert keys["cleared"] is keys["other_model"] is keys["purged"] is None
    for name in ("flagged", "manual"):
        png = world.store.read(keys[name])  # type: ignore[arg-type]
        overlay = PILImage.open(io.BytesIO(png))
        assert overlay.format == "PNG" and overlay.size == (224, 224)
        assert np.asarray(overlay.convert("RGBA"))[..., 3].max() > 0

    # Again (a redelivered task): nothing left to make, no Grad-CAM run, nothing changed.
    again = explain_chunk(world.sessions, world.store, explainer, world.version_id, ids)
    assert (again.made, again.skipped) == (0, 5) and explainer.calls == [2]
    assert _keys(world) == keys

    # The worker that loads the other model makes that result's heatmap.
    other = explain_chunk(
        world.sessions, world.store, FakeExplainer(OTHER), world.other_version_id, ids
    )
    assert other.made == 1 and _keys(world)["other_model"]


def test_an_unreadable_original_fails_alone(db_settings):
    world = _world(db_settings)
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        key = s.get(Image, world.ids["manual"]).storage_key
    world.store.remove(key)
    outcome = explain_chunk(
        world.sessions, world.store, FakeExplainer(), world.version_id, list(world.ids.values())
    )
    assert (outcome.made, outcome.failed) == (1, 1)
    keys = _keys(world)
    assert keys["flagged"] and keys["manual"] is None


def test_the_task_is_idempotent_and_scoring_asks_for_heatmaps_of_images_to_a_person(
    db_settings, monkeypatch
):
    world = _world(db_settings)
    rt = _Runtime(world.sessions, db_settings, world.store, FakeExplainer(), world.version_id)
    monkeypatch.setattr(tasks, "runtime", lambda: rt)
    first = tasks.explain_images.apply(args=[list(world.ids.values())])
    second = tasks.explain_images.apply(args=[list(world.ids.values())])
    assert first.successful() and first.result["made"] == 2
    assert second.successful() and second.result["made"] == 0

    # Scoring: a chunk done, the ids that go to a person are sent to the explain queue.
    sent = RecordingCelery()
    monkeypatch.setattr(tasks, "app", sent)
    monkeypatch.setattr(
        tasks, "score_chunk", lambda *a, **k: ChunkOutcome(scored=3, to_person=[7, 9])
    )
    monkeypatch.setattr(tasks, "split_for_retry", lambda *a: [])
    assert tasks.score_images.apply(args=[[7, 8, 9]]).successful()
    assert [(t["name"], t["args"], t["queue"]) for t in sent.sent] == [
        (EXPLAIN_TASK, [[7, 9]], EXPLAIN_QUEUE)
    ]
    # Nothing to a person, nothing asked.
    sent.sent.clear()
    monkeypatch.setattr(tasks, "score_chunk", lambda *a, **k: ChunkOutcome(scored=3))
    assert tasks.score_images.apply(args=[[7, 8, 9]]).successful()
    assert sent.sent == []


def test_with_the_embedded_broker_heatmaps_wait_until_scoring_is_done(db_settings, monkeypatch):
    """The filesystem broker serves queues in turn: the task itself lets scoring go first."""
    world = _world(db_settings)
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        waiting = s.get(Image, world.ids["cleared"])
        s.add(
            Image(
                batch_id=waiting.batch_id,
                sha256="c" * 64,
                original_name="waiting.jpg",
                storage_key=waiting.storage_key,
                size_bytes=1,
                state="queued",
            )
        )
    rt = _Runtime(world.sessions, db_settings, world.store, FakeExplainer(), world.version_id)
    sent = RecordingCelery()
    monkeypatch.setattr(tasks, "runtime", lambda: rt)
    monkeypatch.setattr(tasks, "app", sent)
    ids = list(world.ids.values())
    assert db_settings.uses_filesystem_broker
    assert tasks.explain_images.apply(args=[ids]).result == {"deferred": 5}
    assert [(t["name"], t["args"], t["queue"], t["countdown"]) for t in sent.sent] == [
        (EXPLAIN_TASK, [ids], EXPLAIN_QUEUE, tasks.EXPLAIN_DEFER_S)
    ]
    assert not any(_keys(world).values())
    # Redis hands the queues out in the worker's order: no need to wait there.
    rt.settings = replace(db_settings, broker_url="redis://127.0.0.1:1/0")
    assert tasks.explain_images.apply(args=[ids]).result["made"] == 2


def test_the_explain_queue_is_declared_and_routed():
    app = make_celery()
    assert EXPLAIN_QUEUE in {q.name for q in app.conf.task_queues}
    assert app.conf.task_routes[EXPLAIN_TASK] == {"queue": EXPLAIN_QUEUE}


@pytest.mark.redis
def test_redis_hands_out_heatmaps_only_once_scoring_is_idle(settings, redis_url):
    """A worker consumes priority, cpu, explain in that order: heatmaps asked for first still
    wait for every scoring chunk (the bulk path goes first)."""
    app = make_celery(replace(settings, broker_url=redis_url))
    for i in range(3):
        app.send_task(EXPLAIN_TASK, args=[[200 + i]], queue=EXPLAIN_QUEUE)
    for i in range(2):
        app.send_task(tasks.SCORE_TASK, args=[[i]], queue="cpu")
    app.send_task(tasks.SCORE_TASK, args=[[100]], queue="priority")
    received = consume_in_order(app, ["priority", "cpu", EXPLAIN_QUEUE], 6)
    assert received == [[100], [0], [1], [200], [201], [202]]


# ---- the real network ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_flag_everything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained second-generation network, threshold 0: every image is flagged."""
    out = tmp_path_factory.mktemp("v2") / "lenet_lld_v2.keras"
    subprocess.run(
        [sys.executable, "-m", "leukoscreen.cli", "model-init", "--arch", "lenet_lld_v2"]
        + ["--permissive-gate", "--threshold", "0", "--out", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


def test_a_worker_explains_with_the_network_and_pixels_that_scored(settings, v2_flag_everything):
    from db import migrate
    from model.explain import overlay_png
    from model.inference import load_model
    from model.preprocess import prepare
    from worker.scoring import register_model_version, score_chunk

    migrate.upgrade(settings.database_url)
    sessions = session_factory(engine_for(settings.database_url))
    store = ContentStore(settings.storage_dir)
    blobs = [smear_like_jpeg(400 + i) for i in range(3)]
    with sessions.begin() as s:
        batch = Batch(name="v2", submitted_by="t", laboratory_id=DEFAULT_LAB_ID)
        images = [
            Image(
                batch=batch,
                sha256=(key := store.commit(store.stage(io.BytesIO(b), 10**7))),
                original_name=f"{i}.jpg",
                storage_key=key,
                size_bytes=len(b),
            )
            for i, b in enumerate(blobs)
        ]
        s.add_all(images)
        s.flush()
        ids = [i.id for i in images]
    model = load_model(v2_flag_everything, batch_size=4)
    version = register_model_version(sessions, model)
    scored = score_chunk(sessions, store, model, version, ids, max_attempts=3)
    assert scored.scored == 3 and sorted(scored.to_person) == ids

    made = explain_chunk(sessions, store, model, version, scored.to_person)

    assert made.made == 3 and made.seconds_per_image > 0
    size = model.card.input_size
    expected = model.heatmaps(
        np.stack([prepare(b, None, size, with_quality=False).pixels for b in blobs])
    )
    with sessions() as s:
        keys = dict(s.execute(select(Result.image_id, Result.heatmap_key)).all())
    for image_id, heat in zip(ids, expected, strict=True):
        stored = store.read(keys[image_id])
        assert PILImage.open(io.BytesIO(stored)).size == size
        assert stored == overlay_png(heat)


# ---- the reconciler ------------------------------------------------------------------------


def test_the_reconciler_asks_again_for_heatmaps_missing_a_while_after_scoring(db_settings):
    settings = replace(db_settings, stale_after_s=900)
    world = _world(settings)
    now = datetime.now(UTC)
    old, long_ago = now - timedelta(hours=1), now - HEATMAP_WINDOW - timedelta(hours=1)
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        for name in world.ids:
            s.execute(
                update(Result).where(Result.image_id == world.ids[name]).values(scored_at=old)
            )
        batch_id = s.get(Image, world.ids["flagged"]).batch_id
    # More cases: scored a minute ago (its message is surely still queued), asked again a
    # minute ago, scored before the window, rescored since by the other model.
    _, (fresh, asked, ancient, rescored) = seed_scored(
        settings.database_url,
        [0.9] * 4,
        storage_dir=settings.storage_dir,
        blobs=[smear_like_jpeg(500 + i) for i in range(4)],
    )
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        for image_id, values in (
            (fresh, {"scored_at": now - timedelta(minutes=1)}),
            (asked, {"scored_at": old, "heatmap_requested_at": now - timedelta(minutes=1)}),
            (ancient, {"scored_at": long_ago}),
            (rescored, {"scored_at": old}),
        ):
            s.execute(update(Result).where(Result.image_id == image_id).values(**values))
        s.add(
            Result(
                image_id=rescored,
                batch_id=batch_id,
                model_version_id=world.other_version_id,
                p_leukemia=0.1,
                flagged=False,
                threshold=0.5,
                route="cleared",
                scored_at=old,
            )
        )

    report = reconcile(make_celery(settings), world.sessions, settings)  # type: ignore[arg-type]

    # Flagged, manual review and the other model's flagged result: all go to a person without
    # a heatmap an hour after scoring. Cleared, purged and the four cases above: not asked.
    assert report.heatmaps_enqueued == 3
    messages = [p.read_text() for p in settings.broker_dir.glob("*.msg")]
    assert len(messages) == 1 and EXPLAIN_TASK in messages[0]
    # Asked once per stale period, not at every run.
    assert reconcile(make_celery(settings), world.sessions, settings).heatmaps_enqueued == 0  # type: ignore[arg-type]
    explain_chunk(
        world.sessions, world.store, FakeExplainer(), world.version_id, [world.ids["flagged"]]
    )
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        asked_before = [world.ids[n] for n in ("flagged", "manual", "other_model")]
        s.execute(
            update(Result).where(Result.image_id.in_(asked_before)).values(heatmap_requested_at=old)
        )
    # A stale period later: the two still missing are asked for again, the one made meanwhile
    # is not.
    assert reconcile(make_celery(settings), world.sessions, settings).heatmaps_enqueued == 2  # type: ignore[arg-type]


# ---- retention -----------------------------------------------------------------------------


def test_retention_removes_an_images_heatmap_with_its_original(db_settings):
    url = db_settings.database_url
    store = ContentStore(db_settings.storage_dir)
    _, (old, kept) = seed_scored(
        url,
        [0.9, 0.9],
        storage_dir=db_settings.storage_dir,
        blobs=[smear_like_jpeg(600), smear_like_jpeg(601)],
    )
    _, (twin_old, twin_new) = seed_scored(
        url,
        [0.9, 0.9],
        storage_dir=db_settings.storage_dir,
        blobs=[smear_like_jpeg(602), smear_like_jpeg(603)],
    )
    gone_key = give_heatmap(url, db_settings.storage_dir, old, heat=0.5)
    kept_key = give_heatmap(url, db_settings.storage_dir, kept, heat=0.7)
    # The same overlay on an old image and a newer one (content-addressed: one file).
    shared = give_heatmap(url, db_settings.storage_dir, twin_old, heat=0.9)
    assert give_heatmap(url, db_settings.storage_dir, twin_new, heat=0.9) == shared
    sessions = session_factory(engine_for(url))
    with sessions.begin() as s:
        s.execute(
            update(Image)
            .where(Image.id.in_([old, twin_old]))
            .values(created_at=datetime.now(UTC) - timedelta(days=40))
        )

    report = purge_old_images(sessions, store, 30, None)

    assert (report.images, report.files_removed, report.heatmaps_removed) == (2, 2, 1)
    assert not store.exists(gone_key)
    assert store.exists(kept_key) and store.exists(shared)
    with sessions() as s:
        keys = dict(s.execute(select(Result.image_id, Result.heatmap_key)).all())
    assert keys[old] is None and keys[twin_old] is None
    assert keys[kept] == kept_key and keys[twin_new] == shared


# ---- asked for by a reviewer ---------------------------------------------------------------


def _explain_messages(settings) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        text for p in settings.broker_dir.glob("*.msg") if EXPLAIN_TASK in (text := p.read_text())
    ]


def test_a_reviewer_gets_the_missing_heatmap_of_an_image_of_any_age(app, db_settings):
    from db.workers import Beat, record_beat
    from tests.conftest import token_client

    world = _world(db_settings)
    now = datetime.now(UTC)
    with world.sessions.begin() as s:  # type: ignore[attr-defined]
        s.execute(update(Result).values(scored_at=now - HEATMAP_WINDOW - timedelta(days=30)))
    # Older than the reconciler looks back: it never asks for these.
    assert reconcile(make_celery(db_settings), world.sessions, db_settings).heatmaps_enqueued == 0  # type: ignore[arg-type]
    reviewer = token_client(app, db_settings.database_url, "rita", "reviewer")
    uploader = token_client(app, db_settings.database_url, "uma", "uploader")
    flagged = f"/api/v1/images/{world.ids['flagged']}/heatmap"

    # No worker runs: asked for all the same, and the answer says why nothing comes yet.
    answer = reviewer.post(flagged)
    assert answer.status_code == 202, answer.json
    assert answer.json["state"] == "requested" and answer.json["workers_ready"] is False
    assert "(m, aaaaaaaaaaaa)" in answer.json["message"]
    assert len(_explain_messages(db_settings)) == 1
    # Pressing H again at once sends no second task.
    assert reviewer.post(flagged).status_code == 202
    assert len(_explain_messages(db_settings)) == 1

    # A live worker with this model that makes heatmaps: ready to make it.
    record_beat(
        world.sessions,  # type: ignore[arg-type]
        Beat("w1", "host", 1, [EXPLAIN_QUEUE, "cpu"], 1, "m", MINE, now, None, 0),
    )
    manual = reviewer.post(f"/api/v1/images/{world.ids['manual']}/heatmap")
    assert manual.status_code == 202 and manual.json["workers_ready"] is True
    assert "message" not in manual.json
    # A worker with another model cannot make the other model's.
    other = reviewer.post(f"/api/v1/images/{world.ids['other_model']}/heatmap")
    assert other.status_code == 202 and other.json["workers_ready"] is False

    # The task the worker takes makes it; asking again now answers with its address.
    explain_chunk(
        world.sessions, world.store, FakeExplainer(), world.version_id, [world.ids["flagged"]]
    )
    ready = reviewer.post(flagged)
    assert ready.status_code == 200 and ready.json["state"] == "ready"
    assert reviewer.get(ready.json["heatmap_url"]).mimetype == "image/png"

    # Cleared images get none; purged pixels have none to give; uploaders may not ask.
    assert reviewer.post(f"/api/v1/images/{world.ids['cleared']}/heatmap").status_code == 409
    assert reviewer.post(f"/api/v1/images/{world.ids['purged']}/heatmap").status_code == 410
    assert uploader.post(flagged).status_code == 403
