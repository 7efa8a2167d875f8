from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from sqlalchemy import func, select

from db.lifecycle import claim, fail_unfinished
from db.models import Batch, Image, ModelVersion, Result
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from leukoscreen.storage import ContentStore
from model.card import ModelCard
from model.gate import Gate, permissive_gate
from model.inference import Scores
from worker.scoring import register_model_version, score_chunk


@dataclass
class FakeScorer:
    """Scores by mean brightness so each image gets a different, checkable p."""

    sha256: str = "f" * 64
    card: ModelCard = field(default_factory=lambda: ModelCard(name="fake", threshold=0.45))
    gate: Gate | None = field(default_factory=lambda: permissive_gate(4))
    precision: str = "float32"
    calls: list[int] = field(default_factory=list)

    def assess(self, images: np.ndarray) -> Scores:
        self.calls.append(len(images))
        p = images.mean(axis=(1, 2, 3)).astype(np.float64)
        return Scores(p, np.zeros_like(p))


def _seed(settings, blobs: list[bytes]) -> tuple[list[int], ContentStore]:
    store = ContentStore(settings.storage_dir)
    sessions = session_factory(engine_for(settings.database_url))
    ids = []
    with sessions.begin() as s:
        batch = Batch(name="t", submitted_by="test", laboratory_id=DEFAULT_LAB_ID)
        s.add(batch)
        for i, blob in enumerate(blobs):
            key = store.commit(store.stage(io.BytesIO(blob), 10**7))
            image = Image(
                batch=batch,
                sha256=key,
                original_name=f"{i}.jpg",
                storage_key=key,
                size_bytes=len(blob),
                state="queued",
            )
            s.add(image)
            s.flush()
            ids.append(image.id)
    return ids, store


def _results(settings):
    with session_factory(engine_for(settings.database_url))() as s:
        return s.execute(
            select(Result.image_id, Result.p_leukemia, Result.flagged, Result.threshold)
        ).all()


def test_chunk_is_scored_in_one_model_call_with_threshold_recorded(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(6)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    version = register_model_version(sessions, scorer)
    outcome = score_chunk(
        sessions, store, scorer, version, ids, max_attempts=3, decode_pool=ThreadPoolExecutor(2)
    )
    assert (outcome.scored, outcome.failed, outcome.skipped) == (6, 0, 0)
    assert scorer.calls == [6]
    rows = _results(db_settings)
    assert sorted(r.image_id for r in rows) == ids
    for r in rows:
        assert r.threshold == 0.45 and r.flagged == (r.p_leukemia >= 0.45)
    with sessions() as s:
        assert set(s.scalars(select(Image.state))) == {"scored"}
        assert s.scalars(select(Batch.state)).one() == "complete"


@dataclass
class FakeSubtypeScorer(FakeScorer):
    """A network with the subtype head that takes 224x224 inputs."""

    card: ModelCard = field(
        default_factory=lambda: ModelCard(
            name="fake-v2", threshold=0.45, output="p_classes", input_size=(224, 224)
        )
    )
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    def assess(self, images: np.ndarray) -> Scores:
        self.shapes.append(images.shape[1:])
        p = images.mean(axis=(1, 2, 3)).astype(np.float64)
        subtypes = np.tile([0.1, 0.7, 0.2], (len(p), 1))
        return Scores(p, np.zeros_like(p), subtypes)


def test_each_result_stores_its_subtype_and_the_network_gets_its_own_input_size(
    db_settings, make_jpeg
):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(3)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeSubtypeScorer()
    version = register_model_version(sessions, scorer)
    score_chunk(sessions, store, scorer, version, ids, max_attempts=3)
    assert scorer.shapes == [(224, 224, 3)]
    with sessions() as s:
        rows = s.execute(select(Result.subtype, Result.subtype_probs)).all()
    assert len(rows) == 3
    for subtype, probs in rows:
        assert subtype == "pre_b"
        assert probs == pytest.approx({"early_pre_b": 0.1, "pre_b": 0.7, "pro_b": 0.2})


def test_a_network_without_the_subtype_head_stores_no_subtype(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(2)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    score_chunk(sessions, store, scorer, register_model_version(sessions, scorer), ids, 3)
    with sessions() as s:
        assert s.execute(select(Result.subtype, Result.subtype_probs)).all() == [(None, None)] * 2


def test_redelivered_chunk_creates_no_second_result(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(4)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    version = register_model_version(sessions, scorer)
    score_chunk(sessions, store, scorer, version, ids, max_attempts=3)
    again = score_chunk(sessions, store, scorer, version, ids, max_attempts=3)
    assert (again.scored, again.skipped) == (0, 4)
    assert len(_results(db_settings)) == 4


def test_two_workers_racing_on_the_same_images_make_one_result_each(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(4)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    version = register_model_version(sessions, scorer)
    # Both "workers" claim before either stores results, as after a visibility-timeout redelivery.
    first = claim(sessions, ids, version, max_attempts=5)
    assert len(first) == 4
    score_chunk(sessions, store, scorer, version, ids, max_attempts=5)  # second worker
    score_chunk(sessions, store, scorer, version, ids, max_attempts=5)  # and a third delivery
    assert len(_results(db_settings)) == 4


def test_one_corrupt_stored_file_fails_alone(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(3)])
    sessions = session_factory(engine_for(db_settings.database_url))
    with sessions() as s:
        key = s.get(Image, ids[1]).storage_key
    store.path_for(key).write_bytes(b"disk corruption")
    scorer = FakeScorer()
    version = register_model_version(sessions, scorer)
    outcome = score_chunk(sessions, store, scorer, version, ids, max_attempts=3)
    assert (outcome.scored, outcome.failed) == (2, 1)
    with sessions() as s:
        bad = s.get(Image, ids[1])
        assert bad.state == "failed" and "UnidentifiedImageError" in bad.error
        assert {s.get(Image, i).state for i in (ids[0], ids[2])} == {"scored"}


def test_image_that_keeps_killing_workers_is_failed_after_max_attempts(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(1)])
    sessions = session_factory(engine_for(db_settings.database_url))
    for _ in range(2):
        assert claim(sessions, ids, version_id=1, max_attempts=2)  # worker dies after claiming
    assert claim(sessions, ids, version_id=1, max_attempts=2) == []
    with sessions() as s:
        image = s.get(Image, ids[0])
        assert image.state == "failed" and "2 attempts" in image.error


def test_fail_chunk_records_the_error_on_unfinished_images_only(db_settings, make_jpeg):
    ids, store = _seed(db_settings, [make_jpeg(i) for i in range(2)])
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    version = register_model_version(sessions, scorer)
    score_chunk(sessions, store, scorer, version, ids[:1], max_attempts=3)
    fail_unfinished(sessions, ids, "database kept failing")
    with sessions() as s:
        assert s.get(Image, ids[0]).state == "scored"
        assert s.get(Image, ids[1]).state == "failed"
        assert s.get(Image, ids[1]).error == "database kept failing"


def test_model_version_is_registered_once(db_settings):
    sessions = session_factory(engine_for(db_settings.database_url))
    scorer = FakeScorer()
    assert register_model_version(sessions, scorer) == register_model_version(sessions, scorer)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1


@pytest.fixture(scope="module")
def loaded_model(model_path):
    from model.inference import load_model

    return load_model(model_path, batch_size=4)


def test_compiled_batched_scoring_matches_keras_predict(loaded_model, model_path, make_jpeg):
    import keras

    from model.preprocess import prepare, preprocess

    # 6 = one full batch and one padded; the worker hands the graph uint8 pixels and Keras
    # gets the float input the thesis' page computes from the same files.
    pixels = np.stack([prepare(make_jpeg(i), None).pixels for i in range(6)])
    floats = np.stack([preprocess(make_jpeg(i)) for i in range(6)])
    reference = keras.saving.load_model(model_path).predict(floats, verbose=0).reshape(-1)
    np.testing.assert_allclose(loaded_model.score(pixels), reference, atol=1e-5)
    assert loaded_model.sha256 and len(loaded_model.sha256) == 64


def test_the_graph_scales_pixels_exactly_as_preprocess_does():
    import tensorflow as tf

    from model.inference import scaled_in_graph
    from model.preprocess import scale

    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    in_graph = tf.function(scaled_in_graph)(tf.constant(every_value)).numpy()
    assert in_graph.dtype == np.float32
    assert np.array_equal(in_graph, scale(every_value))


def test_scoring_refuses_images_already_scaled(loaded_model):
    floats = np.zeros((2, *loaded_model.network.input_shape[1:]), np.float32)
    with pytest.raises(TypeError, match="uint8"):
        loaded_model.assess(floats)


def test_p_normal_networks_are_converted_in_one_place():
    from model.card import P_NORMAL, to_p_leukemia

    np.testing.assert_allclose(to_p_leukemia(np.array([[0.1], [0.8]]), P_NORMAL), [0.9, 0.2])
    np.testing.assert_allclose(to_p_leukemia(np.array([0.1, 0.8]), "p_leukemia"), [0.1, 0.8])


def test_subtype_head_gives_p_leukemia_as_one_minus_benign_and_conditional_subtypes():
    from model.card import P_CLASSES, P_LEUKEMIA, to_p_leukemia, to_subtype_probs

    raw = np.array([[0.2, 0.4, 0.2, 0.2], [0.9, 0.0, 0.05, 0.05]])
    np.testing.assert_allclose(to_p_leukemia(raw, P_CLASSES), [0.8, 0.1])
    np.testing.assert_allclose(to_subtype_probs(raw, P_CLASSES), [[0.5, 0.25, 0.25], [0, 0.5, 0.5]])
    assert to_subtype_probs(np.array([0.3]), P_LEUKEMIA) is None
