"""Data loading, grouped split, and a one-epoch train + evaluate smoke test on synthetic JPEGs."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import data as mdata
from model.preprocess import decode, preprocess, scale, to_pixels


def jpeg_bytes(seed: int, tint: tuple[int, int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(0, 25, (64, 64, 3)) + np.array(tint), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


CLASS_FOLDERS = (
    ("Benign", (200, 170, 210), "WBC-Benign"),
    ("Early", (150, 120, 200), "WBC-Malignant-Early"),
    ("Pre", (120, 150, 200), "WBC-Malignant-Pre"),
    ("Pro", (150, 200, 120), "WBC-Malignant-Pro"),
)


def make_folder(root: Path, per_class: int = 12, seed: int = 0, subtypes: bool = False) -> Path:
    """Benign (negative) and Early (positive) folders, numbered like the real data; with
    ``subtypes``, Pre and Pro too."""
    for cls, tint, prefix in CLASS_FOLDERS if subtypes else CLASS_FOLDERS[:2]:
        (root / cls).mkdir(parents=True)
        for i in range(1, per_class + 1):
            seed = seed + i + (0 if cls == "Benign" else 1000)
            (root / cls / f"{prefix}-{i:03d}.jpg").write_bytes(jpeg_bytes(seed, tint))
    return root


def test_group_of_blocks_consecutive_numbers():
    assert mdata.group_of("Benign", "WBC-Benign-021", 20) == "Benign/1"
    assert mdata.group_of("Benign", "WBC-Benign-039", 20) == "Benign/1"
    assert mdata.group_of("Benign", "WBC-Benign-040", 20) == "Benign/2"
    assert mdata.group_of("Pro", "WBC-Malignant-Pro-040", 20) == "Pro/2"
    assert mdata.group_of("Pro", "scan", 20) == "Pro/scan"


def test_folder_labels():
    assert mdata.folder_label("Benign") == 0 and mdata.folder_label("negative") == 0
    assert all(mdata.folder_label(n) == 1 for n in ("Early", "Pre", "Pro", "positive"))
    with pytest.raises(ValueError):
        mdata.folder_label("Unknown")


def test_uint8_pixels_scale_to_exactly_what_preprocess_returns():
    data = jpeg_bytes(0, (120, 80, 200))
    pixels = to_pixels(decode(data).image)
    assert pixels.dtype == np.uint8
    assert np.array_equal(scale(pixels), preprocess(data))


def test_load_dataset_dedupes_and_skips_broken(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6)
    dup = (root / "Early" / "WBC-Malignant-Early-003.jpg").read_bytes()
    (root / "Early" / "WBC-Malignant-Early-004.jpg").write_bytes(dup)
    (root / "Benign" / "WBC-Benign-099.jpg").write_bytes(b"not a jpeg")
    (root / "Benign" / "notes.txt").write_text("ignored")
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # cold, write cache, read it
        ds = mdata.load_dataset(root, block=2, cache_dir=cache)
        assert ds.skipped == ["Benign/WBC-Benign-099.jpg"]
        assert ds.duplicates == ["Early/WBC-Malignant-Early-004.jpg"]
        assert len(ds.records) == 11 and ds.images.shape == (11, 256, 256, 3)
        assert len({r.sha256 for r in ds.records}) == 11
        assert ds.labels.sum() == 5
        i = [r.file for r in ds.records].index("Benign/WBC-Benign-001.jpg")
        x = preprocess((root / "Benign/WBC-Benign-001.jpg").read_bytes())
        assert np.array_equal(scale(ds.images[i]), x)


def fake_records(n_groups: int = 30, per_group: int = 7) -> list[mdata.Record]:
    out = []
    for cls, label in (("Benign", 0), ("Early", 1), ("Pro", 1)):
        for g in range(n_groups):
            for k in range(per_group):
                num = g * 20 + k
                out.append(
                    mdata.Record(
                        f"{cls}/{cls}-{num:04d}.jpg",
                        label,
                        mdata.group_of(cls, f"{cls}-{num:04d}", 20),
                        f"{cls}{num}",
                    )
                )
    return out


def test_grouped_split_keeps_groups_whole_and_is_seeded():
    records = fake_records()
    splits = mdata.grouped_split(records, 0.15, 0.15, seed=7)
    owner: dict[str, str] = {}
    for name, rs in splits.items():
        for r in rs:
            assert owner.setdefault(r.group, name) == name, f"{r.group} on two sides"
    files = [r.file for rs in splits.values() for r in rs]
    assert sorted(files) == sorted(r.file for r in records)  # partition: nothing lost or doubled
    for cls in ("Benign", "Early", "Pro"):  # stratified by class folder
        n_test = sum(r.group.startswith(cls) for r in splits["test"])
        assert 0.1 * 210 <= n_test <= 0.25 * 210
    again = mdata.grouped_split(list(reversed(records)), 0.15, 0.15, seed=7)
    assert again == splits
    other = mdata.grouped_split(records, 0.15, 0.15, seed=8)
    assert [r.file for r in other["test"]] != [r.file for r in splits["test"]]


def test_split_file_round_trip(tmp_path):
    records = fake_records(5, 3)
    splits = mdata.grouped_split(records, 0.2, 0.2, seed=1)
    ds = mdata.Dataset(records, np.zeros((len(records), 1, 1, 3), np.uint8), ["bad.jpg"], ["d.jpg"])
    path = tmp_path / "m.split.json"
    mdata.write_split(path, splits, ds, {"seed": 1})
    saved = mdata.read_split(path)
    assert saved["seed"] == 1 and saved["dropped_duplicates"] == ["d.jpg"]
    assert sum(v["n"] for v in saved["sizes"].values()) == len(records)
    assert {r["file"] for r in saved["splits"]["test"]} == {r.file for r in splits["test"]}
    assert all("sha256" in r for r in saved["splits"]["train"])


def test_class_weights_balance_the_loss():
    from model.train import class_weights

    y = np.array([0] * 10 + [1] * 40)
    w = class_weights(y)
    assert w[0] * 10 == pytest.approx(w[1] * 40) and w[0] == pytest.approx(2.5)


def test_class_weights_with_subtypes_keep_screening_balanced_and_give_subtypes_one_weight():
    from model.train import class_weights

    classes = np.array([0] * 10 + [1] * 10 + [2] * 20 + [3] * 10)
    w = class_weights(classes, 4)
    assert w[0] * 10 == pytest.approx(w[1] * 40)
    assert w[1] == w[2] == w[3]


def test_classes_loss_adds_the_screening_term_to_the_subtype_term():
    from model.train import classes_loss

    y_pred = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]], np.float32)
    loss = np.asarray(classes_loss(np.array([2.0, 2.0], np.float32), y_pred))
    # wrong screening answer: -log 0.1 (subtype) - log 0.3 (leukemia)
    assert loss[0] == pytest.approx(-np.log(0.1) - np.log(0.3), rel=1e-4)
    assert loss[1] == pytest.approx(-np.log(0.7) - np.log(0.9), rel=1e-4)
    benign = np.asarray(classes_loss(np.array([0.0], np.float32), y_pred[:1]))
    assert benign[0] == pytest.approx(-2 * np.log(0.7), rel=1e-4)


def test_stain_jitter_keeps_the_range_the_background_near_white_and_moves_stained_pixels():
    import tensorflow as tf

    from model.train import stain_jitter

    tf.random.set_seed(1)
    x = np.ones((8, 8, 8, 3), np.float32)
    x[:, :4] = [0.45, 0.25, 0.6]  # a purple, stained half
    y = stain_jitter(tf.constant(x), tf, 0.05).numpy()
    assert y.min() >= 0 and y.max() <= 1
    assert np.abs(y[:, 4:] - 1).max() < 0.2  # white background stays light
    assert np.abs(y[:, :4] - x[:, :4]).mean() > 0.005
    same = stain_jitter(tf.constant(x), tf, 0.0).numpy()
    np.testing.assert_allclose(same[:, :4], x[:, :4], atol=2e-3)


def test_colour_jitter_keeps_range_and_changes_colour():
    import tensorflow as tf

    from model.train import colour_jitter

    tf.random.set_seed(0)
    x = tf.fill([4, 8, 8, 3], 0.5) + tf.random.uniform([4, 8, 8, 3], -0.2, 0.2)
    y = colour_jitter(x, tf).numpy()
    assert y.shape == (4, 8, 8, 3) and y.min() >= 0 and y.max() <= 1
    assert np.abs(y - x.numpy()).mean() > 0.01


def test_jpeg_jitter_compresses_about_half_the_images_on_their_8x8_grid():
    import tensorflow as tf

    from model.quality import blockiness
    from model.train import jpeg_jitter

    tf.random.set_seed(2)
    rng = np.random.default_rng(2)
    ramp = np.linspace(0.2, 0.9, 64, dtype=np.float32)
    x = np.repeat((ramp[None, :, None] * ramp[:, None, None]), 3, axis=2)
    x = np.stack([x * rng.uniform(0.7, 1.0) for _ in range(64)])
    y = jpeg_jitter(tf.constant(x), tf, 30).numpy()
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = np.abs(y - x).max(axis=(1, 2, 3)) > 1 / 255
    blocky = np.array([blockiness(np.round(im[..., 1] * 255).astype(np.uint8)) for im in y])
    assert 16 <= changed.sum() <= 48  # half of 64, binomially
    # Most of the compressed images show the block grid (the highest qualities barely do).
    assert np.median(blocky[changed]) > 1.3 and blocky[~changed].max() < 1.1


def test_blur_jitter_blurs_about_half_the_images_and_keeps_the_range():
    import tensorflow as tf

    from model.quality import fine_detail
    from model.train import blur_jitter

    tf.random.set_seed(4)
    rng = np.random.default_rng(4)
    x = rng.uniform(0.2, 0.8, (64, 32, 32, 3)).astype(np.float32)
    y = blur_jitter(tf.constant(x), tf, 1.5).numpy()
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # The others come back exactly as they were (a one-tap kernel).
    changed = np.abs(y - x).max(axis=(1, 2, 3)) > 1e-6
    assert 16 <= changed.sum() <= 48  # half of 64, binomially
    # A blur keeps the mean and removes the finest detail (fine_detail of white noise is
    # about 1, of a smooth field about 0.5).
    assert np.abs(y.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))).max() < 0.01
    detail = np.array([fine_detail(np.round(im[..., 1] * 255).astype(np.uint8)) for im in y])
    assert detail[~changed].min() > 0.9 and np.median(detail[changed]) < 0.85


def test_gamma_jitter_moves_mid_tones_and_keeps_black_white_and_the_range():
    import tensorflow as tf

    from model.train import gamma_jitter

    tf.random.set_seed(3)
    x = np.tile(np.array([0.0, 0.5, 1.0], np.float32)[None, :, None, None], (32, 1, 1, 3))
    y = gamma_jitter(tf.constant(x), tf, 0.25).numpy()
    assert y.min() >= 0 and y.max() <= 1
    np.testing.assert_allclose(y[:, 2], 1.0, atol=1e-6)
    assert np.all(y[:, 0] < 1e-4)
    mid = y[:, 1, 0, 0]
    assert mid.min() >= 0.5**1.25 - 1e-6 and mid.max() <= 0.5 ** (1 / 1.25) + 1e-6
    assert mid.std() > 0.01


def test_random_affine_fills_by_reflection_and_keeps_the_pixel_range():
    import tensorflow as tf

    from model.train import random_affine

    tf.random.set_seed(0)
    flat = tf.fill([8, 64, 64, 3], 0.7)
    # Reflect fill: a uniform field stays uniform after any rotation or shift (no black corners).
    np.testing.assert_allclose(random_affine(flat, tf).numpy(), 0.7, atol=1e-6)
    x = tf.random.uniform([8, 64, 64, 3])
    y = random_affine(x, tf).numpy()
    assert y.shape == (8, 64, 64, 3) and y.min() >= 0.0 and y.max() <= 1.0
    assert all(np.abs(y[i] - x.numpy()[i]).mean() > 0.05 for i in range(8))


def test_random_affine_keeps_a_centred_spot_near_the_centre():
    import tensorflow as tf

    from model.train import random_affine

    tf.random.set_seed(1)
    x = np.zeros((16, 65, 65, 3), np.float32)
    x[:, 30:35, 30:35, :] = 1.0
    y = random_affine(tf.constant(x), tf).numpy()[..., 0]
    rows, cols = np.indices(y.shape[1:])
    for img in y:
        cy, cx = (img * rows).sum() / img.sum(), (img * cols).sum() / img.sum()
        # Rotation, zoom, shear and flips keep the centre; the shift (at most 10% of the
        # size, 6.5 px, seen through zoom >= 0.85 and shear <= 0.1) moves it by under 9 px.
        assert abs(cy - 32) <= 9 and abs(cx - 32) <= 9


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lenet_lld", "lenet_lld_bn", "lenet_lld_v2", "lenet_lld_v2s"])
def test_train_and_evaluate_smoke(tmp_path, arch):
    from model import evaluate, train
    from model.card import file_sha256, read_card
    from model.gate import model_version, read_gate

    with_subtypes = arch.startswith("lenet_lld_v2")
    root = make_folder(tmp_path / "data", per_class=16, subtypes=with_subtypes)
    out = tmp_path / "weights" / f"{arch}.keras"
    plots = tmp_path / "plots"
    extra: list[str] = []
    if with_subtypes:
        other = tmp_path / "other-lab"
        other.mkdir()
        for i in range(4):
            (other / f"BloodImage_{i:05d}.jpg").write_bytes(jpeg_bytes(90_000 + i, (190, 90, 90)))
        extra = ["--stain-jitter", "0.05", "--other-lab", str(other), "--plots", str(plots)]
    epochs = "1"
    init = tmp_path / "init.keras"
    if arch == "lenet_lld_v2":
        extra += ["--average-epochs", "2", "--average-lr", "1e-4"]
        extra += ["--jpeg-quality", "30", "--gamma-jitter", "0.25", "--blur-jitter", "1.0"]
    if arch == "lenet_lld_v2s":
        # Weight averaging alone, from given weights: no main fit at all.
        from model.architecture import ARCHITECTURES

        ARCHITECTURES[arch]().save(init)
        extra += ["--init", str(init), "--average-epochs", "1"]
        epochs = "0"
    args = parse(
        train,
        [
            "--data",
            str(root),
            "--out",
            str(out),
            "--arch",
            arch,
            "--epochs",
            epochs,
            "--batch-size",
            "8",
            "--block",
            "2",
            "--val-frac",
            "0.25",
            "--test-frac",
            "0.25",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--seed",
            "3",
            "--split-seed",
            "11",
            *extra,
        ],
    )
    assert train.run(args) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["name"] == arch
    if with_subtypes:
        # One training command writes every fitted artefact: weights, split, history, gate
        # statistics, calibration, threshold, subtype figures and the gate's figures.
        assert card["output"] == "p_classes" and card["input_size"] == [224, 224]
        assert read_card(out).input_size == (224, 224)
        for part in ("test", "validation"):
            sub = card["subtype_metrics"][part]
            assert sub["labels"] == ["early_pre_b", "pre_b", "pro_b"]
            assert np.array(sub["confusion"]).shape == (3, 3)
            assert sum(map(sum, sub["confusion"])) == sub["n"] > 0
        assert "stain jitter sigma 0.05" in card["training"]["augmentation"]
        if arch == "lenet_lld_v2":
            assert "JPEG at quality 30-95" in card["training"]["augmentation"]
            assert "gamma 1/1.25-1.25" in card["training"]["augmentation"]
            assert "half blurred, Gaussian sigma 0-1 px" in card["training"]["augmentation"]
        assert card["gate_evaluation"]["held_out"]["other_lab"]["n"] > 0
        # The domain statistics are fitted on the images as the camera took them, and the
        # test images are routed in each of the eight views of a square.
        assert card["gate"]["orientations"] == {"name": "camera", "views": ["as taken"]}
        turned = card["gate_evaluation"]["orientations"]
        assert len(turned) == 8 and "rotated 90" in turned
        assert all(v["n"] == card["gate_evaluation"]["test"]["n"] for v in turned.values())
        assert (plots / "reliability.png").stat().st_size > 1000
        assert out.with_suffix(".gate.npz").is_file()
        from model import heatmap_figure

        figure = plots / "heatmaps.png"
        cache = ["--cache-dir", str(tmp_path / "cache")]
        argv = ["--model", str(out), "--data", str(root), "--out", str(figure), *cache]
        assert heatmap_figure.main(argv) == 0
        assert figure.stat().st_size > 1000
        from model import tta_check

        assert tta_check.main(["--model", str(out), "--data", str(root), *cache]) == 0
        from model import heatmap_focus

        assert heatmap_focus.main(["--model", str(out), "--data", str(root), *cache]) == 0
        from model import orientation_check

        del card["gate_evaluation"]["orientations"], card["gate"]["orientations"]
        out.with_suffix(".json").write_text(json.dumps(card))
        argv = ["--model", str(out), "--data", str(root), "--write"]
        assert orientation_check.main(argv) == 0  # a card fitted before records them too
        rewritten = json.loads(out.with_suffix(".json").read_text())
        assert rewritten["gate_evaluation"]["orientations"].keys() == turned.keys()
        assert rewritten["gate"]["orientations"]["name"] == "camera"
        assert rewritten["sha256"] == card["sha256"]
        from model import card_markdown

        markdown = tmp_path / "card.md"
        assert card_markdown.main([str(out), "--out", str(markdown)]) == 0
        text = markdown.read_text()
        assert "## B-ALL subtype (positive images)" in text and "| 224x224 |" in text
        assert "| Early pre-B | " in text and "## Gate: which images" in text
        assert "## bfloat16 workers" in text and "| held out, pure_noise |" in text
        assert "| rotated 90 | " in text and "**Turned and mirrored fields**" in text
    else:
        assert card["output"] == "p_leukemia" and card["input_size"] == [256, 256]
    assert 0.0 <= card["threshold"] <= 1.0
    # training ends by fitting the gate; the model version covers weights and gate
    assert card["gate"]["limits"] and card["calibration"]["ece_after"]
    assert card["sha256"] == model_version(file_sha256(out), card, read_gate(out, card))
    assert card["gate_evaluation"]["held_out"]["pure_noise"]["n"] > 0
    # ... and checks what bfloat16 workers would change, on the same images
    bf16 = card["precision_check"]["bfloat16"]
    assert {"val", "test", "held out, pure_noise"} <= set(bf16["sets"])
    assert bf16["sets"]["val"]["n"] == card["gate_evaluation"]["val"]["n"]
    assert isinstance(bf16["changed_to_cleared"], int)
    assert read_card(out).threshold == card["threshold"]
    assert card["validation"]["sensitivity"] >= 0.99  # the operating-point rule on val
    assert "auc" in card["colour_baseline"]["test"]
    history = json.loads(out.with_suffix(".history.json").read_text())
    training = card["training"]
    if arch == "lenet_lld_v2s":
        # The gate fitted on all eight views instead: one mean per class and view.
        from model import fit_gate
        from model.gate import read_gate

        assert (
            fit_gate.main(["--model", str(out), "--data", str(root), "--orientations", "dihedral"])
            == 0
        )
        dihedral = json.loads(out.with_suffix(".json").read_text())
        assert dihedral["gate"]["orientations"]["name"] == "dihedral"
        assert len(dihedral["gate"]["orientations"]["views"]) == 8
        refitted = read_gate(out, dihedral)
        assert refitted is not None and refitted.class_means.shape[0] == 16
        assert dihedral["sha256"] != card["sha256"]  # a new gate is a new model version
        assert "loss" not in history and training["initialised_from"] == str(init)
        assert training["weight_averaging"].startswith("mean of the weights after each of 1 ")
        assert len(history["averaging"]["loss"]) == 1
    else:
        assert len(history["loss"]) == 1 and len(history["val_loss"]) == 1
        assert training["initialised_from"] == "random"
    if arch == "lenet_lld_v2":
        assert training["weight_averaging"].startswith("mean of the weights after each of 2 ")
        assert len(history["averaging"]["loss"]) == 2
    split = mdata.read_split(out.with_suffix(".split.json"))
    assert split["seed"] == 11  # the split follows --split-seed, not the training seed
    records = mdata.load_dataset(root, block=2).records
    expected = mdata.grouped_split(records, 0.25, 0.25, seed=11)
    assert [r["file"] for r in split["splits"]["test"]] == [r.file for r in expected["test"]]
    groups = {
        n: {
            mdata.group_of(r["file"].split("/")[0], Path(r["file"]).stem, 2)
            for r in split["splits"][n]
        }
        for n in ("train", "val", "test")
    }
    assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    if arch == "lenet_lld":  # no optimizer state: ~26 MB, not ~78 MB
        assert 24e6 < out.stat().st_size < 30e6

    report_dir = tmp_path / "report"
    args = parse(
        evaluate,
        [
            "--model",
            str(out),
            "--data",
            str(root),
            "--out",
            str(report_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert evaluate.run(args) == 0
    report = json.loads((report_dir / "report.json").read_text())
    for key in (
        "accuracy",
        "precision",
        "sensitivity",
        "specificity",
        "f1",
        "auc",
        "loss",
        "threshold",
        "n",
        "confusion",
        "sweep",
        "colour_baseline",
        "routes",
    ):
        assert key in report, key
    assert sum(report["routes"]["routes"].values()) == report["n"]
    if with_subtypes:
        assert report["subtype"]["n"] == split["sizes"]["test"]["positive"]
    else:
        assert "subtype" not in report
    assert report["data"]["split"] == "test" and report["n"] == split["sizes"]["test"]["n"]
    assert report["threshold"] == card["threshold"]
    assert report["auc"] == pytest.approx(card["metrics"]["auc"], abs=1e-6)
    assert sum(report["confusion"].values()) == report["n"]
    for png in ("f1_threshold.png", "roc.png", "confusion.png"):
        assert (report_dir / png).stat().st_size > 1000
    # lenet_lld_v2s only averaged given weights here: no main fit, so no history to plot.
    assert (report_dir / "history.png").is_file() == (arch != "lenet_lld_v2s")

    # An unseen folder (no image of the split file in it) is evaluated whole.
    unseen = make_folder(tmp_path / "unseen", per_class=3, seed=50_000)
    (unseen / "Benign" / "WBC-Benign-001.jpg").write_bytes(jpeg_bytes(555, (10, 200, 10)))
    args = parse(
        evaluate,
        [
            "--model",
            str(out),
            "--data",
            str(unseen),
            "--no-plots",
            "--out",
            str(tmp_path / "r2"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert evaluate.run(args) == 0
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["n"] == 6 and report["data"]["split"] == "all"


def test_weight_average_is_the_mean_of_each_epochs_weights():
    from model.train import weight_average

    class Weights:
        def __init__(self) -> None:
            self.now: list[np.ndarray] = []

        def get_weights(self) -> list[np.ndarray]:
            return self.now

    model = Weights()
    average = weight_average()
    average.set_model(model)
    for epoch, value in enumerate((1.0, 2.0, 6.0)):
        model.now = [np.full((2, 2), value, np.float32), np.array([value * 10], np.float32)]
        average.on_epoch_end(epoch)
    mean = average.mean()
    assert np.allclose(mean[0], 3.0) and np.allclose(mean[1], [30.0])
    assert mean[0].dtype == np.float32


def test_recompute_batch_norm_measures_the_statistics_of_the_current_weights():
    import keras

    from model.inference import scaled_in_graph
    from model.train import recompute_batch_norm

    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    normed = keras.layers.BatchNormalization(momentum=0.9)(conv)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(normed))
    model = keras.Model(inputs, outputs)
    norm = model.layers[2]
    # Statistics left from other weights: recomputing must not be pulled towards them.
    norm.moving_mean.assign(np.full(4, 50.0, np.float32))
    norm.moving_variance.assign(np.full(4, 9.0, np.float32))
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)

    recompute_batch_norm(model, images, batch_size=8)

    features = keras.Model(inputs, conv)
    batches = [np.asarray(features(scaled_in_graph(images[i : i + 8]))) for i in range(0, 20, 8)]
    expected_mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    expected_var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    assert np.allclose(np.asarray(norm.moving_mean), expected_mean, atol=1e-5)
    assert np.allclose(np.asarray(norm.moving_variance), expected_var, rtol=1e-4, atol=1e-6)
    assert norm.momentum == 0.9  # the layer's own momentum is back for any later training
