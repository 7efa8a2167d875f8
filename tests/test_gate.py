"""The domain and image-quality gate: measures, every route and reason, fitting, calibration."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from model.corruptions import png_bytes
from model.gate import (
    CHECKS,
    MEAN_AND_STD,
    MEAN_ONLY,
    Gate,
    Route,
    RouteReason,
    calibrate,
    expected_calibration_error,
    fit_calibration,
    fit_domain,
    fit_hue_band,
    fit_limits,
    model_version,
    permissive_gate,
    read_gate,
    route_image,
    write_statistics,
)
from model.preprocess import prepare
from model.quality import MEASURES, measure
from tests.conftest import REPO

SHIPPED = REPO / "model" / "weights" / "lenet_lld.keras"
SHARED_DATA = REPO.parent / "shared" / "data"


def _smear(seed: int = 0, size: int = 224) -> Image.Image:
    """Light background with violet cells, like the training smears."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (228, 222, 236))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(6, 12))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(200, 180, 210))
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(8, 14))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(110, 60, 170))
    return img


def _gate(limits: dict[str, dict[str, float]], threshold: float = 10.0) -> Gate:
    return Gate(
        hue_band=(180, 215),
        limits=limits,
        domain_threshold=threshold,
        class_means=np.zeros((2, 3)),
        precision=np.eye(3),
        calibration=(1.0, 0.0),
        reference={},
        sha256="x",
    )


def test_quality_measures_tell_dark_bright_empty_and_sharp_images_apart():
    smear = measure(_smear().resize((256, 256)), (224, 224), (180, 215))
    dark = measure(Image.new("RGB", (256, 256), (5, 5, 5)), (224, 224), (180, 215))
    white = measure(Image.new("RGB", (256, 256), (255, 255, 255)), (224, 224), (180, 215))
    assert set(smear) == set(MEASURES)
    assert dark["dark_fraction"] == 1.0 and dark["brightness"] < 0.05
    assert white["bright_fraction"] == 1.0 and white["object_fraction"] == 0.0
    assert smear["stained_fraction"] > 0.01 and smear["object_fraction"] > 0.1
    assert smear["focus"] > white["focus"]
    assert measure(_smear().resize((256, 256)), (640, 480), None)["aspect_ratio"] == 640 / 480
    assert np.isnan(measure(_smear().resize((256, 256)), (224, 224), None)["stained_fraction"])


def test_prepare_returns_the_same_pixels_as_preprocess_plus_the_measures():
    from model.preprocess import preprocess, scale

    blob = png_bytes(_smear())
    prepared = prepare(blob, (180, 215))
    assert prepared.pixels.dtype == np.uint8
    np.testing.assert_array_equal(scale(prepared.pixels), preprocess(blob))
    assert prepared.original_mode == "RGB" and prepared.quality["min_side"] == 224


@pytest.mark.parametrize(("measure_name", "side", "reason"), CHECKS)
def test_every_quality_check_routes_to_manual_review_with_its_reason(measure_name, side, reason):
    gate = _gate({measure_name: {side: 1.0}})
    measures = dict.fromkeys(MEASURES, 1.0)
    measures[measure_name] = 0.5 if side == "low" else 1.5
    decision = gate.decide(0.9, 0.5, measures, 0.0, "RGB")
    assert decision.route == Route.MANUAL_REVIEW
    assert decision.reason == reason
    assert decision.failed == (f"{measure_name}:{side}",)


def test_in_domain_images_are_flagged_or_cleared_by_the_threshold():
    gate = _gate({"brightness": {"low": 0.5}})
    measures = dict.fromkeys(MEASURES, 1.0)
    flagged = gate.decide(0.7, 0.5, measures, 1.0, "RGB")
    cleared = gate.decide(0.3, 0.5, measures, 1.0, "RGB")
    assert (flagged.route, flagged.reason) == (Route.FLAGGED, None)
    assert (cleared.route, cleared.reason) == (Route.CLEARED, None)


def test_far_from_the_training_features_is_outside_the_training_domain():
    gate = _gate({}, threshold=10.0)
    measures = dict.fromkeys(MEASURES, 1.0)
    far = gate.decide(0.01, 0.5, measures, 10.5, "RGB")
    assert (far.route, far.reason) == (Route.MANUAL_REVIEW, RouteReason.OUTSIDE_TRAINING_DOMAIN)
    nan = gate.decide(0.01, 0.5, measures, float("nan"), "RGB")
    assert nan.route == Route.MANUAL_REVIEW


def test_converted_colour_modes_and_a_missing_gate_go_to_a_person():
    measures = dict.fromkeys(MEASURES, 1.0)
    palette = _gate({}).decide(0.01, 0.5, measures, 0.0, "P")
    assert palette.reason == RouteReason.UNUSUAL_COLOUR_MODE
    no_gate = route_image(None, 0.5, 0.01, measures, 0.0, "RGB")
    assert (no_gate.route, no_gate.reason) == (Route.MANUAL_REVIEW, RouteReason.NO_GATE)


def test_reasons_are_reported_in_check_order_and_all_failures_kept():
    gate = _gate({"brightness": {"low": 0.5}, "focus": {"low": 0.5}}, threshold=1.0)
    measures = dict.fromkeys(MEASURES, 0.1)
    decision = gate.decide(0.01, 0.5, measures, 5.0, "RGB")
    assert decision.reason == RouteReason.UNDEREXPOSED
    assert decision.failed == ("brightness:low", "focus:low", "domain")


def test_hue_band_is_the_shortest_arc_holding_the_mass_even_across_zero():
    hist = np.zeros((1, 256))
    hist[0, [250, 252, 254, 1, 3]] = 1
    low, high = fit_hue_band(hist, mass=0.99)
    assert (low, high) == (250, 3)
    hist = np.zeros((1, 256))
    hist[0, 100:110] = 1
    assert fit_hue_band(hist, mass=0.99) == (100, 109)


def test_fitted_limits_lie_outside_the_training_range_with_a_floor_for_fractions():
    rng = np.random.default_rng(0)
    table = rng.uniform(0.4, 0.6, (500, len(MEASURES)))
    table[:, MEASURES.index("dark_fraction")] = 0.0  # never any dark pixel in training
    table[:, MEASURES.index("min_side")] = 224
    table[:, MEASURES.index("aspect_ratio")] = 1.0
    limits = fit_limits(table)
    assert limits["brightness"]["low"] < table[:, MEASURES.index("brightness")].min()
    assert limits["brightness"]["high"] > table[:, MEASURES.index("brightness")].max()
    assert limits["dark_fraction"]["high"] == pytest.approx(0.02)
    # a wide spread does not push a low limit to zero, where it could never fail
    table[:, MEASURES.index("stained_fraction")] = np.linspace(0.001, 0.9, 500)
    assert fit_limits(table)["stained_fraction"]["low"] > 0
    assert limits["min_side"]["low"] == 112 and limits["aspect_ratio"]["high"] == 1.25


def test_domain_distance_is_small_in_distribution_and_large_outside():
    rng = np.random.default_rng(1)
    feats = np.exp(rng.normal(0, 1, (400, 5)))
    labels = np.array([0, 1] * 200)
    means, precision = fit_domain(feats, labels)
    gate = Gate((0, 255), {}, 0.0, means, precision, (1.0, 0.0), {}, "")
    inside = gate.domain_distance(np.exp(rng.normal(0, 1, (200, 5))))
    outside = gate.domain_distance(np.exp(rng.normal(4, 1, (200, 5))))
    assert np.median(outside) > 5 * np.quantile(inside, 0.99)


def test_one_mean_per_view_keeps_each_views_images_close_and_the_spread_tight():
    """A view that shifts some features: pooled into one mean per class it widens the
    covariance (a shifted outlier hides inside); one mean per view keeps both views close
    and the outlier far."""
    rng = np.random.default_rng(4)
    base = rng.normal(0, 0.1, (800, 4))
    shift = np.array([3.0, -3.0, 0.0, 0.0])
    labels = np.array([0, 1] * 400)
    views = np.repeat([0, 1], 400)
    x = base + views[:, None] * shift
    feats = np.exp(x)
    pooled = Gate((0, 255), {}, 0.0, *fit_domain(feats, labels), (1.0, 0.0), {}, "")
    per_view = Gate((0, 255), {}, 0.0, *fit_domain(feats, labels + 2 * views), (1.0, 0.0), {}, "")
    assert per_view.class_means.shape == (4, 4)
    fresh = rng.normal(0, 0.1, (200, 4))
    turned = np.exp(fresh + shift)
    outlier = np.exp(fresh + shift / 2)  # halfway: in neither view, inside the pooled spread
    assert np.quantile(per_view.domain_distance(turned), 0.99) < 20
    assert np.median(per_view.domain_distance(outlier)) > 5 * np.median(
        pooled.domain_distance(outlier)
    )


def test_calibration_recovers_a_known_miscalibration_and_lowers_the_error():
    rng = np.random.default_rng(2)
    true_p = rng.uniform(0.01, 0.99, 5000)
    y = (rng.uniform(size=5000) < true_p).astype(int)
    # An overconfident network: logits three times too large, shifted.
    z = np.log(true_p / (1 - true_p))
    raw = 1 / (1 + np.exp(-(3 * z + 1)))
    a, b = fit_calibration(raw, y)
    assert a == pytest.approx(1 / 3, abs=0.05) and b == pytest.approx(-1 / 3, abs=0.1)
    after = calibrate(raw, (a, b))
    assert expected_calibration_error(after, y) < expected_calibration_error(raw, y) / 3
    order = np.argsort(raw)
    assert np.all(np.diff(after[order]) >= 0)  # monotone: the operating point is kept


def test_model_version_changes_with_the_threshold_and_the_gate():
    gate = permissive_gate(3)
    base = model_version("a" * 64, {"threshold": 0.5, "output": "p_leukemia"}, gate)
    other_threshold = model_version("a" * 64, {"threshold": 0.4, "output": "p_leukemia"}, gate)
    tighter = replace(gate, domain_threshold=3.0)
    other_gate = model_version("a" * 64, {"threshold": 0.5, "output": "p_leukemia"}, tighter)
    assert len({base, other_threshold, other_gate}) == 3
    assert model_version("a" * 64, {}, None) == "a" * 64


def test_a_mean_only_gate_keeps_its_version_and_a_spread_gate_says_what_it_measures(tmp_path):
    weights = tmp_path / "m.keras"
    weights.write_bytes(b"weights")
    card = {"threshold": 0.5, "output": "p_leukemia"}
    versions = {}
    for statistics in (MEAN_ONLY, MEAN_AND_STD):
        gate = write_statistics(weights, permissive_gate(3, statistics))
        card["gate"] = gate.describe()
        assert ("block_statistics" in card["gate"]) == (statistics != MEAN_ONLY)
        read = read_gate(weights, card)
        assert read is not None and read.block_statistics == statistics
        versions[statistics] = model_version("a" * 64, card, read)
    assert versions[MEAN_ONLY] != versions[MEAN_AND_STD]
    card["gate"]["block_statistics"] = ["max"]
    with pytest.raises(ValueError, match="block statistics"):
        read_gate(weights, card)


def test_gate_features_hold_each_blocks_mean_and_spread_per_channel():
    import keras
    from keras import layers

    from model.gate_features import feature_network

    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    first_block = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(6, 3, activation="relu")(first_block)
    x = layers.GlobalAveragePooling2D()(layers.MaxPooling2D(2)(x))
    network = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
    images = np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    block = keras.Model(inputs, first_block).predict(images, verbose=0)
    _, mean_only = feature_network(network, MEAN_ONLY).predict(images, verbose=0)
    _, spread = feature_network(network, MEAN_AND_STD).predict(images, verbose=0)
    assert mean_only.shape == (2, 6 + 4 + 6)  # penultimate, then each block's means
    assert spread.shape == (2, 6 + 2 * 4 + 2 * 6)
    np.testing.assert_allclose(spread[:, 6:10], block.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(spread[:, 10:14], block.std(axis=(1, 2)), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def shipped():
    from model.inference import load_model

    return load_model(SHIPPED, batch_size=8)


def _route_all(loaded, blobs: list[bytes]) -> list:
    prepared = [prepare(b, loaded.gate.hue_band, loaded.card.input_size) for b in blobs]
    scores = loaded.assess(np.stack([p.pixels for p in prepared]))
    return [
        route_image(
            loaded.gate,
            loaded.card.threshold,
            float(p),
            pr.quality,
            float(d),
            pr.original_mode,
        )
        for pr, p, d in zip(prepared, scores.p_leukemia, scores.domain_distance, strict=True)
    ]


def test_the_shipped_model_has_a_gate_covered_by_its_version(shipped):
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert shipped.gate is not None
    assert shipped.sha256 == card["sha256"] != shipped.weights_sha256
    assert card["gate_evaluation"]["test"]["manual_review"] <= 0.02
    assert card["calibration"]["ece_after"]["test"] < card["calibration"]["ece_before"]["test"]


def test_the_shipped_gate_sends_non_smears_and_damaged_captures_to_a_person(shipped):
    rng = np.random.default_rng(3)
    page = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(page).multiline_text((5, 5), "patient report\n" * 12, fill="black")
    blobs = [
        png_bytes(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))),
        png_bytes(Image.new("RGB", (224, 224), (3, 3, 3))),
        png_bytes(Image.new("RGB", (224, 224), (236, 230, 240))),
        png_bytes(page),
        png_bytes(_smear().convert("L").convert("RGB")),
    ]
    decisions = _route_all(shipped, blobs)
    assert [d.route for d in decisions] == [Route.MANUAL_REVIEW] * len(blobs)
    assert decisions[1].reason == RouteReason.UNDEREXPOSED


@pytest.mark.shared_data
def test_the_shipped_gate_refers_other_labs_smears_and_keeps_its_own(shipped):
    from model import data as mdata

    other = sorted((SHARED_DATA / "bccd-other-lab").glob("*.jpg"))[1::6]
    if not other:
        pytest.skip("../shared/data is absent")
    decisions = _route_all(shipped, [f.read_bytes() for f in other])
    referred = sum(d.route == Route.MANUAL_REVIEW for d in decisions)
    assert referred >= 0.9 * len(decisions)
    split = mdata.read_split(mdata.split_path(SHIPPED))["splits"]["test"][::3]
    own = _route_all(
        shipped, [(SHARED_DATA / "taleqani-all" / r["file"]).read_bytes() for r in split]
    )
    assert sum(d.route == Route.MANUAL_REVIEW for d in own) <= 0.03 * len(own)


def test_the_eight_views_of_a_square_are_distinct_and_a_rectangle_keeps_its_shapes():
    from model.fit_gate import CAMERA, DIHEDRAL, ORIENTATIONS, oriented

    square = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    views = oriented(square, ORIENTATIONS[DIHEDRAL])
    assert len(views) == 8 and all(v.shape == square.shape for v in views)
    assert len({v.tobytes() for v in views}) == 8  # no view repeats another
    # Each view moves whole pixels (all three channels) of each image, losing none.
    for v in views:
        for original, moved in zip(square, v, strict=True):
            assert sorted(map(tuple, original.reshape(-1, 3))) == sorted(
                map(tuple, moved.reshape(-1, 3))
            )
    np.testing.assert_array_equal(views[1][0], np.rot90(square[0]))
    assert [v.tobytes() for v in oriented(square, ORIENTATIONS[CAMERA])] == [square.tobytes()]
    wide = np.zeros((1, 2, 5, 3), np.uint8)
    assert len(oriented(wide, ORIENTATIONS[DIHEDRAL])) == 4


def test_the_workers_graph_computes_the_gates_domain_distance(shipped):
    import keras

    from model.folding import fold_batch_norm
    from model.gate_features import feature_network
    from model.preprocess import scale

    images = np.stack(
        [
            prepare(png_bytes(_smear(seed)), shipped.gate.hue_band, shipped.card.input_size).pixels
            for seed in range(5)
        ]
    )
    in_graph = shipped.assess(images).domain_distance
    network = feature_network(
        fold_batch_norm(keras.saving.load_model(SHIPPED, compile=False)),
        shipped.gate.block_statistics,
    )
    _, features = network.predict(scale(images), verbose=0)
    np.testing.assert_allclose(in_graph, shipped.gate.domain_distance(features), rtol=1e-3)


def _colour_mode_versions(smear: Image.Image) -> dict[str, bytes]:
    """One smear saved as RGB, palette, 1-bit, 16-bit greyscale and greyscale with alpha."""
    grey16 = np.asarray(smear.convert("L"), dtype=np.uint16) * 257
    return {
        "RGB": png_bytes(smear),
        "palette": png_bytes(smear.convert("P", palette=Image.Palette.ADAPTIVE)),
        "1-bit": png_bytes(smear.convert("1")),
        "16-bit": png_bytes(Image.fromarray(grey16)),
        "LA": png_bytes(smear.convert("LA")),
    }


def test_palette_1bit_and_16bit_versions_of_a_smear_go_to_manual_review_not_scored(shipped):
    versions = _colour_mode_versions(_smear(seed=7))
    modes = {
        name: prepare(blob, None, with_quality=False).original_mode
        for name, blob in versions.items()
    }
    assert modes["palette"] == "P" and modes["1-bit"] == "1" and modes["16-bit"].startswith("I")
    decisions = dict(zip(versions, _route_all(shipped, list(versions.values())), strict=True))
    for name in ("palette", "1-bit", "16-bit", "LA"):
        assert decisions[name].route == Route.MANUAL_REVIEW, name
        assert decisions[name].reason == RouteReason.UNUSUAL_COLOUR_MODE, name
    # The RGB original is judged on its own merits: its colour mode is never the reason.
    assert not any(f.startswith("mode:") for f in decisions["RGB"].failed)


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


BAND = (180, 215)


def _fitted_on(make_field) -> tuple[Gate, dict[str, dict[str, float]]]:  # type: ignore[no-untyped-def]
    """A gate whose quality limits are fitted on 40 synthetic fields, as fit-gate fits them
    on the training split."""
    clean = [prepare(png_bytes(make_field(seed)), BAND, (224, 224)) for seed in range(40)]
    limits = fit_limits(np.array([[p.quality[m] for m in MEASURES] for p in clean]))
    return _gate(limits), limits


def test_a_field_saved_as_a_low_quality_jpeg_goes_to_a_person_for_its_compression():
    band = BAND
    gate, limits = _fitted_on(_smear)
    field = _smear(99)
    as_png = prepare(png_bytes(field), band, (224, 224))
    at_95 = prepare(_jpeg_bytes(field, 95), band, (224, 224))
    at_30 = prepare(_jpeg_bytes(field, 30), band, (224, 224))
    assert at_30.quality["blockiness"] > limits["blockiness"]["high"] > 1.0
    for kept in (as_png, at_95):
        assert "blockiness:high" not in gate.decide(0.01, 0.5, kept.quality, 0.0, "RGB").failed
    compressed = gate.decide(0.01, 0.5, at_30.quality, 0.0, "RGB")
    assert compressed.route == Route.MANUAL_REVIEW
    assert "blockiness:high" in compressed.failed
    assert RouteReason.COMPRESSION_ARTEFACTS in {r for _, _, r in CHECKS}


def test_blockiness_is_not_measured_on_an_image_smaller_than_one_block():
    from model.quality import blockiness

    assert np.isnan(blockiness(np.zeros((5, 5), np.uint8)))
    assert blockiness(np.full((16, 16), 128, np.uint8)) == pytest.approx(1.0)


def _textured_smear(seed: int) -> Image.Image:
    """A synthetic smear with the camera's pixel-level grain (flat painted shapes have none,
    and blur cannot remove detail that is not there)."""
    grain = np.random.default_rng(1000 + seed).normal(0, 4, (224, 224, 3))
    a = np.asarray(_smear(seed), np.float64) + grain
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_a_blurred_or_digitally_enlarged_field_goes_to_a_person_as_out_of_focus():
    from model.corruptions import _zoom_in

    band = BAND
    gate, limits = _fitted_on(_textured_smear)
    field = _textured_smear(99)
    as_taken = prepare(png_bytes(field), band, (224, 224))
    assert "fine_detail:low" not in gate.decide(0.01, 0.5, as_taken.quality, 0.0, "RGB").failed
    damaged = {
        "blur 1.5": field.filter(ImageFilter.GaussianBlur(1.5)),
        "enlarged 2x": _zoom_in(field, 2),
    }
    for name, img in damaged.items():
        quality = prepare(png_bytes(img), band, (224, 224)).quality
        assert quality["fine_detail"] < limits["fine_detail"]["low"], name
        decision = gate.decide(0.01, 0.5, quality, 0.0, "RGB")
        assert decision.route == Route.MANUAL_REVIEW, name
        assert "fine_detail:low" in decision.failed, name
        assert decision.reason == RouteReason.OUT_OF_FOCUS, name


def test_fine_detail_is_independent_of_contrast_and_undefined_below_three_pixels():
    from model.quality import fine_detail

    grain = np.random.default_rng(3).integers(100, 140, (64, 64)).astype(np.uint8)
    flatter = (128 + (grain.astype(np.int16) - 128) // 2).astype(np.uint8)
    assert fine_detail(grain) == pytest.approx(fine_detail(flatter), abs=0.03)
    assert np.isnan(fine_detail(np.zeros((2, 2), np.uint8)))
