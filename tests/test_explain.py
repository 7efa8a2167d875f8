"""Grad-CAM heatmaps (``model.explain``): right shape and range, on the region that carries the
evidence, from the log-odds the network scored, rendered as a small transparent overlay."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.card import P_CLASSES, P_LEUKEMIA, P_NORMAL

SIZE = 32


def _detector(head: str):  # type: ignore[no-untyped-def]
    """A chain network whose leukemia evidence is red light and whose evidence against it is
    green: a 1x1 convolution splits the two channels, global pooling averages them."""
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    conv = layers.Conv2D(2, 1, use_bias=False)
    x = layers.Activation("relu")(conv(inputs))
    x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    if head == P_CLASSES:
        dense = layers.Dense(4, activation="softmax")
        # benign falls with red and rises with green; the three subtypes the other way round.
        weights = [np.array([[-20.0, 10.0, 12.0, 8.0], [20.0, -10.0, -12.0, -8.0]]), np.zeros(4)]
    else:
        dense = layers.Dense(1, activation="sigmoid")
        sign = 1.0 if head == P_LEUKEMIA else -1.0
        weights = [sign * np.array([[40.0], [-40.0]]), np.array([-sign])]
    network = keras.Model(inputs, dense(x))
    kernel = np.zeros((1, 1, 3, 2), dtype=np.float32)
    kernel[0, 0, 0, 0] = 1.0  # red
    kernel[0, 0, 1, 1] = 1.0  # green
    conv.set_weights([kernel])
    dense.set_weights([w.astype(np.float32) for w in weights])
    return network


def _patch(red: tuple[int, int], green: tuple[int, int] | None = None) -> np.ndarray:
    """A dark image (uint8 pixels, as the worker has them) with an 8x8 red patch at ``red``
    (row, col) and maybe a green one."""
    image = np.full((SIZE, SIZE, 3), 13, dtype=np.uint8)
    r, c = red
    image[r : r + 8, c : c + 8, 0] = 255
    if green is not None:
        r, c = green
        image[r : r + 8, c : c + 8, 1] = 255
    return image


def _hot_centre(heat: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(heat > 0.5)
    return float(rows.mean()), float(cols.mean())


@pytest.mark.parametrize("head", [P_LEUKEMIA, P_NORMAL, P_CLASSES])
def test_the_map_highlights_the_evidence_and_follows_it_when_it_moves(head):
    from model.explain import GradCam

    gradcam = GradCam(_detector(head), head, batch_size=4)
    images = np.stack([_patch((2, 2), green=(20, 20)), _patch((20, 20), green=(2, 2))])
    maps = gradcam(images)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    # Red raises the leukemia score: its patch is hot. Green lowers it: its patch stays cold.
    top_left, bottom_right = (slice(2, 10), slice(2, 10)), (slice(20, 28), slice(20, 28))
    assert maps[0][top_left].mean() > 0.6 and maps[0][bottom_right].max() < 0.1
    assert maps[1][bottom_right].mean() > 0.6 and maps[1][top_left].max() < 0.1
    first, second = _hot_centre(maps[0]), _hot_centre(maps[1])
    assert first[0] < 12 and first[1] < 12
    assert second[0] > 19 and second[1] > 19


@pytest.mark.parametrize("head", [P_LEUKEMIA, P_NORMAL, P_CLASSES])
def test_the_target_is_the_leukemia_log_odds_of_the_networks_own_output(head):
    from model.card import to_p_leukemia
    from model.explain import GradCam
    from model.preprocess import scale

    network = _detector(head)
    images = np.stack([_patch((2, 2)), _patch((20, 20), green=(2, 2)), _patch((10, 12))])
    _, log_odds = GradCam(network, head, batch_size=2).explain(images)  # padded: 2 + 1
    p = to_p_leukemia(network.predict(scale(images), verbose=0), head)
    assert np.all(np.isfinite(log_odds))
    np.testing.assert_allclose(log_odds, np.log(p) - np.log1p(-p), rtol=1e-3, atol=1e-3)


def test_an_image_without_evidence_gets_an_empty_map_not_noise():
    from model.explain import GradCam

    nothing = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    maps = GradCam(_detector(P_LEUKEMIA), P_LEUKEMIA, batch_size=1)(nothing)
    assert np.all(maps == 0.0)


@pytest.fixture(scope="module")
def v2_network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path_factory.mktemp("v2") / "lenet_lld_v2.keras"
    subprocess.run(
        [sys.executable, "-m", "leukoscreen.cli", "model-init", "--arch", "lenet_lld_v2"]
        + ["--permissive-gate", "--out", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


def test_the_untrained_v2_network_gives_one_map_per_image_at_its_input_size(v2_network):
    import keras

    from model.explain import GradCam
    from model.inference import load_model
    from model.preprocess import prepare
    from tests.conftest import smear_like_jpeg

    model = load_model(v2_network, batch_size=4)
    assert model.card.input_size == (224, 224)
    images = np.stack(
        [
            prepare(smear_like_jpeg(i), None, model.card.input_size, with_quality=False).pixels
            for i in range(5)
        ]
    )
    maps = model.heatmaps(images)  # the folded network the worker scores with (two batches)
    assert maps.shape == (5, 224, 224)
    assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0
    # Batch norm folded into the convolutions changes nothing in the map.
    unfolded = GradCam(keras.saving.load_model(v2_network, compile=False), P_CLASSES, 8)
    np.testing.assert_allclose(unfolded(images), maps, atol=1e-3)


def test_the_overlay_is_a_small_transparent_png_at_the_maps_size():
    from model.explain import MAX_ALPHA, colorize, overlay_png

    heat = np.tile(np.linspace(0.0, 1.0, 224, dtype=np.float32), (200, 1))  # 224 wide, 200 high
    png = overlay_png(heat)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (224, 200)
    assert set(image.info) <= {"transparency"}  # pixels only
    rgba = np.asarray(image.convert("RGBA"))
    np.testing.assert_array_equal(rgba, colorize(heat))
    # Alpha follows the heat: none where it is 0, MAX_ALPHA at the peak, rising in between.
    alpha = rgba[0, :, 3].astype(int)
    assert alpha[0] == 0 and alpha[-1] == round(255 * MAX_ALPHA)
    assert np.all(np.diff(alpha) >= 0)
    # A perceptual colormap: dark purple to yellow, lighter as the heat rises.
    light = rgba[0, :, :3].astype(float) @ np.array([0.299, 0.587, 0.114])
    assert light[-1] > light[112] > light[0]
    assert len(png) < 16_000


def test_bench_prints_what_a_heatmap_costs_beside_scoring(model_path, capsys):
    """``leukoscreen bench`` part 6: figures printed, never asserted as speeds."""
    from bench.throughput import bench_explain, machine, print_table
    from tests.conftest import smear_like_jpeg

    figures = bench_explain(model_path, [smear_like_jpeg(1), smear_like_jpeg(2)], 2, 0.01)
    assert figures["explain_batch"] == 2
    for key in ("explain_score_ms", "explain_gradcam_ms", "explain_png_ms", "explain_ratio"):
        assert figures[key] > 0, key
    print_table({"machine": machine(), **figures})
    out = capsys.readouterr().out
    assert "heatmap: Grad-CAM, batch of 2" in out and "heatmap / scoring" in out


def test_heat_on_stain_tells_maps_on_the_cells_from_maps_on_the_background():
    from model.heatmap_focus import heat_on_stain, stained_mask

    pixels = np.full((40, 40, 3), 235, dtype=np.uint8)  # pale background
    pixels[10:20, 10:20] = (150, 60, 160)  # a stained cell, a sixteenth of the image
    mask = stained_mask(pixels)
    assert mask.sum() == 100 and mask[15, 15] and not mask[0, 0]

    on_cell = np.zeros((40, 40), np.float32)
    on_cell[10:20, 10:20] = 1.0
    assert heat_on_stain(on_cell, mask) == pytest.approx((1.0, 16.0))
    uniform = np.ones((40, 40), np.float32)
    assert heat_on_stain(uniform, mask) == pytest.approx((1 / 16, 1.0))
    off_cell = 1.0 - on_cell
    assert heat_on_stain(off_cell, mask) == pytest.approx((0.0, 0.0))
    assert all(np.isnan(heat_on_stain(np.zeros((40, 40)), mask)))
