"""bfloat16 convolutions on CPUs that have them: chosen only there, close to float32, and
every result scored that way carries a model version of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.precision import BFLOAT16, FLOAT32, cpu_flags, resolve

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "taleqani-all"
WEIGHTS = REPO / "model" / "weights" / "lenet_lld.keras"


@pytest.mark.parametrize(
    ("setting", "on_gpu", "flags", "expected"),
    [
        ("auto", False, {"avx512f", "avx512_bf16"}, BFLOAT16),
        ("auto", False, {"avx512f", "amx_bf16", "amx_tile"}, BFLOAT16),
        ("auto", False, {"avx2", "fma", "avx512f"}, FLOAT32),  # bfloat16 would be emulated
        ("auto", True, {"avx512_bf16"}, FLOAT32),  # not measured on a GPU
        ("float32", False, {"avx512_bf16"}, FLOAT32),
        ("bfloat16", False, {"avx2"}, BFLOAT16),  # an operator may force it
    ],
)
def test_auto_precision_is_bfloat16_only_on_a_cpu_with_native_bfloat16(
    setting, on_gpu, flags, expected
):
    assert resolve(setting, on_gpu, flags) == expected


def test_auto_keeps_float32_when_an_operator_turned_onednn_off(monkeypatch):
    from leukoscreen.config import load_settings

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert not load_settings().onednn
    assert resolve("auto", False, {"avx512_bf16"}, onednn=False) == FLOAT32
    assert resolve("bfloat16", False, {"avx512_bf16"}, onednn=False) == BFLOAT16  # forced
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert load_settings().onednn
    assert resolve("auto", False, {"avx512_bf16"}, onednn=True) == BFLOAT16


def test_auto_uses_bfloat16_only_for_a_model_whose_card_shows_it_checked():
    from model.precision import checked

    check = {"sets": {"val": {"n": 3, "routes_changed": {}}}, "changed_to_cleared": 0}
    assert checked({"precision_check": {"bfloat16": check}})
    assert not checked({"precision_check": {"bfloat16": {**check, "changed_to_cleared": 1}}})
    assert not checked({"name": "retrained elsewhere"}) and not checked(None)
    assert resolve("auto", False, {"avx512_bf16"}, card_checked=False) == FLOAT32
    assert resolve("bfloat16", False, {"avx512_bf16"}, card_checked=False) == BFLOAT16  # forced


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve("half", False, set())


def test_a_worker_with_an_unknown_precision_says_so_and_does_not_start(monkeypatch, capsys):
    from leukoscreen.cli import main

    monkeypatch.setenv("LEUKOSCREEN_PRECISION", "fp8")
    assert main(["worker"]) == 2
    assert "LEUKOSCREEN_PRECISION must be one of auto, float32, bfloat16" in capsys.readouterr().err


def test_cpu_flags_come_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_only_the_convolutions_after_the_first_run_in_bfloat16():
    keras = pytest.importorskip("keras")
    from model.architecture import build_lenet_lld_v2
    from model.precision import in_precision

    network = build_lenet_lld_v2()
    assert in_precision(network, FLOAT32) is network
    reduced = in_precision(network, BFLOAT16)
    policies = [(type(layer).__name__, layer.dtype_policy.name) for layer in reduced.layers[1:]]
    convs = [p for name, p in policies if name == "Conv2D"]
    assert convs[0] == "float32" and set(convs[1:]) == {"mixed_bfloat16"}
    first_pool = next(i for i, (name, _) in enumerate(policies) if name == "MaxPooling2D")
    assert {p for _, p in policies[: first_pool + 1]} == {"float32"}
    head = next(i for i, (name, _) in enumerate(policies) if "Global" in name or name == "Flatten")
    assert {p for _, p in policies[head:]} == {"float32"}
    # The weights are the same numbers; only the arithmetic differs.
    for a, b in zip(network.get_weights(), reduced.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(reduced, keras.Model)


def test_a_bfloat16_worker_gets_a_model_version_and_name_of_its_own(db_settings):
    from db.session import engine_for, session_factory
    from model.gate import model_version, permissive_gate
    from tests.test_scoring import FakeScorer
    from worker.scoring import register_model_version

    gate = permissive_gate(4)
    card = {"threshold": 0.5, "output": "sigmoid"}
    assert model_version("a" * 64, card, gate) == model_version("a" * 64, card, gate, FLOAT32)
    assert model_version("a" * 64, card, gate, BFLOAT16) != model_version("a" * 64, card, gate)
    assert model_version("a" * 64, None, None, BFLOAT16) != "a" * 64

    from db.models import ModelVersion

    sessions = session_factory(engine_for(db_settings.database_url))
    plain = register_model_version(sessions, FakeScorer(sha256="1" * 64))
    reduced = register_model_version(sessions, FakeScorer(sha256="2" * 64, precision=BFLOAT16))
    with sessions() as s:
        assert s.get(ModelVersion, plain).name == "fake"
        assert s.get(ModelVersion, reduced).name == "fake (bfloat16)"


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} absent")
def test_bfloat16_routes_match_float32_on_validation_smears():
    from model import data as mdata
    from model.inference import load_model
    from model.precision_check import compare
    from model.preprocess import prepare

    models = {p: load_model(WEIGHTS, 32, p) for p in (FLOAT32, BFLOAT16)}
    band, size = models[FLOAT32].gate.hue_band, models[FLOAT32].card.input_size
    rows = mdata.read_split(mdata.split_path(WEIGHTS))["splits"]["val"][::3]
    prepared = [prepare((DATA / r["file"]).read_bytes(), band, size) for r in rows]
    result = compare(models, prepared, np.array([r["label"] for r in rows]))
    assert not result["routes_changed"]
    # ... and the shipped card records the full check that lets ``auto`` use bfloat16.
    from model.card import read_card_data
    from model.precision import checked

    card = read_card_data(WEIGHTS)
    assert checked(card) and {"val", "test"} <= set(card["precision_check"]["bfloat16"]["sets"])
    assert 0 < result["max_dp"] < 0.03  # it did run in bfloat16, and stayed close
    assert result["max_rel_distance"] < 0.1


def test_the_worker_list_names_the_model_as_its_results_do(monkeypatch):
    """Heartbeats carry the same name as the model version row: an operator sees which
    workers run bfloat16."""
    from types import SimpleNamespace

    import worker.tasks
    from model.card import ModelCard

    loaded = SimpleNamespace(card=ModelCard("lenet_lld_v2", 0.6), sha256="c" * 64)
    for precision, name in ((BFLOAT16, "lenet_lld_v2 (bfloat16)"), (FLOAT32, "lenet_lld_v2")):
        rt = SimpleNamespace(model=SimpleNamespace(**vars(loaded), precision=precision))
        monkeypatch.setattr(worker.tasks, "runtime", lambda rt=rt: rt)
        assert worker.tasks._loaded_model() == (name, "c" * 64)
