"""Train a screening network from a folder of class folders (``leukoscreen train``).

    python -m model.train --data /path/to/taleqani-all --out model/weights/lenet_lld.keras

Writes, next to ``--out``: the weights (no optimizer state), ``X.json`` (card: threshold
chosen on the validation split, test metrics, colour baseline), ``X.split.json`` (the
grouped split, file names + sha256), ``X.history.json`` (per-epoch log) and ``X.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from model import data as mdata
from model import metrics as mm
from model.card import P_LEUKEMIA, CardData, card_path, history_path, write_card
from model.evaluate import score
from model.inference import load_model

DATA_SOURCE = (
    "Acute Lymphoblastic Leukemia (ALL) image dataset, bone-marrow laboratory of Taleqani "
    "Hospital, Tehran (89 patients, Zeiss camera, 100x). Dataset by M. Aria et al. (2021). "
    "Cite: M. Ghaderzadeh, M. Aria, A. Hosseini, F. Asadi, D. Bashash, H. Abolghasemi, "
    '"A fast and efficient CNN model for B-ALL diagnosis and its subtypes classification '
    'using peripheral blood smear images", Int. J. Intelligent Systems 37 (2022). '
    "Licence not verified; images are not part of this repository."
)
INTENDED_USE = (
    "Screening aid only, not a diagnosis: images it flags, and a random sample of those it "
    "does not flag, go to a pathologist for review."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--out", type=Path, default=Path("model/weights/lenet_lld.keras"))
    parser.add_argument("--arch", default="lenet_lld", choices=["lenet_lld", "lenet_lld_bn"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=8, help="early-stopping patience")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=1337, help="weights, shuffling, augmentation")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the grouped split (default: --seed); fix it to compare training runs "
        "on the same test images",
    )
    parser.add_argument("--block", type=int, default=20, help="consecutive numbers per group")
    parser.add_argument("--val-frac", type=float, default=0.15)
    parser.add_argument("--test-frac", type=float, default=0.15)
    parser.add_argument("--target-sensitivity", type=float, default=0.99)
    parser.add_argument(
        "--no-gate", action="store_true", help="skip fitting the gate (leukoscreen fit-gate)"
    )
    parser.add_argument(
        "--monitor", default="val_auc", help="early stopping / LR schedule on this (max if auc)"
    )
    parser.add_argument("--max-minutes", type=float, default=40.0, help="stop epochs after this")
    parser.add_argument("--no-augment", action="store_true", help="disable augmentation")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/leukoscreen-cache"))


# ---- input pipeline --------------------------------------------------------------------


def colour_jitter(x, tf):
    """Per-image brightness, contrast, per-channel gain, hue and saturation jitter."""
    n = tf.shape(x)[0]
    x = x * tf.random.uniform([n, 1, 1, 3], 0.85, 1.15)
    x = x + tf.random.uniform([n, 1, 1, 1], -0.1, 0.1)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * tf.random.uniform([n, 1, 1, 1], 0.75, 1.25) + mean
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
    hue = tf.math.floormod(hsv[..., 0] + tf.random.uniform([n, 1, 1], -0.05, 0.05), 1.0)
    sat = tf.clip_by_value(hsv[..., 1] * tf.random.uniform([n, 1, 1], 0.6, 1.4), 0.0, 1.0)
    x = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
    return tf.clip_by_value(x, 0.0, 1.0)


def random_affine(x, tf):
    """The thesis augmentation in one resampling pass: flips, rotation +-180deg, zoom 15%,
    shift 10%, shear 0.1, reflect fill.

    Keras' RandomRotation/Zoom/Translation/Shear layers resample the batch once each; one
    composed transform costs a quarter of that and blurs the image once instead of four times.
    """
    n = tf.shape(x)[0]
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)

    def uniform(lo, hi):
        return tf.random.uniform([n], lo, hi)

    flip_x = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    flip_y = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    angle = uniform(-np.pi, np.pi)
    zoom = uniform(0.85, 1.15)
    shear = uniform(-0.1, 0.1)
    dx, dy = uniform(-0.1, 0.1) * w, uniform(-0.1, 0.1) * h
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) reads input pixel A @ (x - cx, y - cy) + (cx + dx, cy + dy), where
    # A = rotation @ shear @ zoom @ flip; the parameters are symmetric, so sampling the inverse
    # map directly gives the same distribution as sampling the forward one.
    a00, a01 = cos * zoom * flip_x, (cos * shear - sin) * zoom * flip_y
    a10, a11 = sin * zoom * flip_x, (sin * shear + cos) * zoom * flip_y
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    b0 = cx + dx - a00 * cx - a01 * cy
    b1 = cy + dy - a10 * cx - a11 * cy
    zeros = tf.zeros_like(a00)
    transforms = tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.shape(x)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def make_dataset(images, labels, batch_size: int, seed: int, augment: bool, shuffle: bool):
    """tf.data over uint8 arrays already decoded by ``preprocess``; augmentation in tf ops."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    scale = tf.constant(1.0 / 255.0, tf.float32)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) * scale, y), num_parallel_calls=2)
    if augment:
        ds = ds.map(lambda x, y: (colour_jitter(random_affine(x, tf), tf), y), num_parallel_calls=2)
    return ds.prefetch(2)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights: each class contributes half of the loss."""
    n, pos = len(labels), int(labels.sum())
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


# ---- model -----------------------------------------------------------------------------


def build_model(arch: str, lr: float):
    import keras

    from model.architecture import ARCHITECTURES

    model = ARCHITECTURES[arch]()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


def time_limit(minutes: float):
    """Keras callback: stop after ``minutes`` of training wall time."""
    import keras

    class TimeLimit(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() - self.start > minutes * 60:
                print(f"time limit of {minutes} min reached after epoch {epoch + 1}")
                self.model.stop_training = True

    return TimeLimit()


def epoch_log():
    """Keras callback: one flushed line per epoch, plus its duration in the logs."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs["seconds"] = time.monotonic() - self.t0
            line = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()))
            print(f"epoch {epoch + 1}: {line}", flush=True)

    return EpochLog()


def fit(model, train_ds, val_ds, weights, args):
    import keras

    mode = "max" if "auc" in args.monitor or "acc" in args.monitor else "min"
    stopper = keras.callbacks.EarlyStopping(
        monitor=args.monitor,
        mode=mode,
        patience=args.patience,
        restore_best_weights=True,
        verbose=1,
    )
    callbacks = [
        stopper,
        keras.callbacks.ReduceLROnPlateau(
            monitor=args.monitor, mode=mode, factor=0.5, patience=4, verbose=1
        ),
        time_limit(args.max_minutes),
        epoch_log(),
    ]
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        class_weight=weights,
        callbacks=callbacks,
        verbose=2,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return hist, int(stopper.best_epoch) + 1


def export_weights(model, arch: str, path: Path) -> None:
    """Save weights without optimizer state (~26 MB for LeNet-LLD instead of ~78 MB).

    Keras 3 ignores ``include_optimizer=False`` for ``.keras`` files, so the trained
    weights are copied into a fresh, uncompiled network of the same architecture.
    """
    from model.architecture import ARCHITECTURES

    clean = ARCHITECTURES[arch]()
    clean.set_weights(model.get_weights())
    clean.save(path)


# ---- after training: score with the workers' code path, pick threshold, write card ----


def summarise(y, p, threshold, groups) -> dict:
    m = mm.binary_metrics(y, p, threshold)
    m["ci95_wilson"] = mm.proportion_cis(m["confusion"])
    m["ci95_group_bootstrap"] = mm.group_bootstrap_ci(y, p, groups, threshold)
    return m


def colour_baseline(parts: dict[str, mdata.Dataset], target: float, seed: int) -> dict:
    """Logistic regression on colour statistics, fitted on train, threshold on val."""
    feats = {k: mm.colour_features(d.images) for k, d in parts.items()}
    baseline = mm.fit_colour_baseline(feats["train"], parts["train"].labels, seed)
    p_val = mm.colour_baseline_scores(baseline, feats["val"])
    baseline["threshold"] = mm.choose_threshold(parts["val"].labels, p_val, target)
    p_test = mm.colour_baseline_scores(baseline, feats["test"])
    groups = [r.group for r in parts["test"].records]
    baseline["test"] = summarise(parts["test"].labels, p_test, baseline["threshold"], groups)
    return baseline


def run(args: argparse.Namespace) -> int:
    import keras

    t_start = time.monotonic()
    keras.utils.set_random_seed(args.seed)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)

    dataset = mdata.load_dataset(args.data, block=args.block, cache_dir=args.cache_dir)
    print(
        f"{len(dataset.records)} images ({len(dataset.skipped)} undecodable skipped, "
        f"{len(dataset.duplicates)} duplicates dropped)",
        flush=True,
    )
    split_seed = args.seed if args.split_seed is None else args.split_seed
    splits = mdata.grouped_split(dataset.records, args.val_frac, args.test_frac, split_seed)
    split_info = {
        "seed": split_seed,
        "block": args.block,
        "val_frac": args.val_frac,
        "test_frac": args.test_frac,
        "data": str(args.data),
    }
    mdata.write_split(mdata.split_path(out), splits, dataset, split_info)
    parts = {k: dataset.subset({r.file for r in rs}) for k, rs in splits.items()}
    for k, d in parts.items():
        print(f"{k}: {len(d.records)} images, {int(d.labels.sum())} positive", flush=True)

    train_ds = make_dataset(
        parts["train"].images,
        parts["train"].labels,
        args.batch_size,
        args.seed,
        augment=not args.no_augment,
        shuffle=True,
    )
    val_ds = make_dataset(
        parts["val"].images,
        parts["val"].labels,
        args.batch_size,
        args.seed,
        augment=False,
        shuffle=False,
    )
    model = build_model(args.arch, args.lr)
    t_fit = time.monotonic()
    hist, best_epoch = fit(model, train_ds, val_ds, class_weights(parts["train"].labels), args)
    fit_seconds = time.monotonic() - t_fit
    export_weights(model, args.arch, out)
    history_path(out).write_text(json.dumps({"best_epoch": best_epoch, **hist}, indent=1) + "\n")

    loaded = load_model(out, args.batch_size)
    p_val = score(loaded, parts["val"].images)
    threshold = mm.choose_threshold(parts["val"].labels, p_val, args.target_sensitivity)
    p_test = score(loaded, parts["test"].images)
    test_groups = [r.group for r in parts["test"].records]
    card: CardData = {
        "name": args.arch,
        "architecture": args.arch,
        "params": int(model.count_params()),
        "threshold": threshold,
        "output": P_LEUKEMIA,
        "operating_point": f"highest validation specificity with sensitivity >= "
        f"{args.target_sensitivity}",
        "metrics": summarise(parts["test"].labels, p_test, threshold, test_groups),
        "validation": mm.binary_metrics(parts["val"].labels, p_val, threshold),
        "colour_baseline": colour_baseline(parts, args.target_sensitivity, args.seed),
        "sha256": loaded.sha256,
        "data": {
            "source": DATA_SOURCE,
            "split_file": mdata.split_path(out).name,
            "split": split_info,
            "sizes": {k: len(d.records) for k, d in parts.items()},
            "skipped_undecodable": len(dataset.skipped),
            "dropped_duplicates": len(dataset.duplicates),
        },
        "training": {
            "command": "python -m model.train " + shlex.join(sys.argv[1:]),
            "epochs_run": len(hist.get("loss", [])),
            "best_epoch": best_epoch,
            "fit_seconds": round(fit_seconds, 1),
            "total_seconds": round(time.monotonic() - t_start, 1),
            "optimizer": f"Adam lr={args.lr}",
            "loss": "binary_crossentropy",
            "batch_size": args.batch_size,
            "early_stopping": f"{args.monitor}, patience {args.patience}, best weights restored",
            "class_weight": class_weights(parts["train"].labels),
            "augmentation": "none"
            if args.no_augment
            else "flips h/v, rotation +-180deg, zoom 15%, shift 10%, shear 0.1 (one composed "
            "affine resampling, reflect fill); "
            "per-channel gain 0.85-1.15, brightness +-0.1, contrast 0.75-1.25, "
            "hue +-0.05, saturation 0.6-1.4",
        },
        "intended_use": INTENDED_USE,
    }
    write_card(out, card)
    print(json.dumps({k: card["metrics"][k] for k in ("auc", "sensitivity", "specificity")}))
    print(f"threshold {threshold:.4f}; wrote {out} and {card_path(out).name}", flush=True)
    if args.no_gate:
        return 0
    # A network without a gate sends every image to a person: fit it now. This calibrates
    # the scores and chooses the threshold again, on calibrated validation scores.
    from model import fit_gate

    return fit_gate.main(["--model", str(out), "--data", str(args.data)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
