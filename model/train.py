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
from model.card import (
    ARCHITECTURE_NAMES,
    CLASSES,
    P_CLASSES,
    P_LEUKEMIA,
    CardData,
    card_path,
    history_path,
    write_card,
)
from model.evaluate import assess
from model.inference import load_model, scaled_in_graph

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
    parser.add_argument(
        "--arch",
        default="lenet_lld_v2",
        choices=ARCHITECTURE_NAMES,
        help="lenet_lld: the thesis network at 256x256; lenet_lld_v2: native 224x224 with "
        "the subtype head (shipped); lenet_lld_v2s: lenet_lld_v2 with a strided stem",
    )
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
        "--other-lab",
        type=Path,
        default=None,
        help="another laboratory's smears, passed to the gate fit (checked, never trained on)",
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="folder for the gate's figures (model card)"
    )
    parser.add_argument(
        "--monitor", default="val_auc", help="early stopping / LR schedule on this (max if auc)"
    )
    parser.add_argument("--max-minutes", type=float, default=40.0, help="stop epochs after this")
    parser.add_argument("--no-augment", action="store_true", help="disable augmentation")
    parser.add_argument(
        "--stain-jitter",
        type=float,
        default=0.0,
        help="sigma of the optical-density stain jitter (0 = off; Tellez et al. use 0.05)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=0,
        help="save half of the augmented images again as JPEG at a quality drawn from "
        "[this, 95] (0 = off): laboratories' captures arrive more compressed than the training "
        "files (quality about 95)",
    )
    parser.add_argument(
        "--gamma-jitter",
        type=float,
        default=0.0,
        help="per-image gamma drawn log-uniformly from [1/(1+g), 1+g] (0 = off)",
    )
    parser.add_argument(
        "--blur-jitter",
        type=float,
        default=0.0,
        help="blur half of the augmented images with a Gaussian of sigma drawn from [0, this] "
        "pixels (0 = off): a field slightly out of focus passes the gate, and without it the "
        "network reads the missing fine texture as benign",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/leukoscreen-cache"))
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (same --arch) instead of random ones; with --epochs 0 "
        "only --average-epochs train",
    )
    parser.add_argument(
        "--average-epochs",
        type=int,
        default=0,
        help="after the main fit, this many more epochs at the constant --average-lr, whose "
        "end-of-epoch weights are averaged (stochastic weight averaging); 0 = off",
    )
    parser.add_argument("--average-lr", type=float, default=1e-4)


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


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, in optical density.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)


def stain_jitter(x, tf, sigma: float):
    """Per-image stain strength and shift in optical-density space (Tellez et al., 2018).

    Colour deconvolution splits each pixel's absorbance into stain channels; scaling each by
    U(1-sigma, 1+sigma) and shifting it by U(-sigma, sigma) imitates another laboratory's
    staining time and batch better than RGB jitter, which also moves the white background.
    The vectors are H&E's; on Romanowsky-stained smears they still span the stains' colours.
    """
    n = tf.shape(x)[0]
    rgb_from_hed = tf.constant(_RGB_FROM_HED)
    hed_from_rgb = tf.constant(np.linalg.inv(_RGB_FROM_HED).astype(np.float32))
    od = -tf.math.log(tf.clip_by_value(x, 1e-3, 1.0))
    hed = tf.einsum("nhwc,cd->nhwd", od, hed_from_rgb)
    alpha = tf.random.uniform([n, 1, 1, 3], 1.0 - sigma, 1.0 + sigma)
    beta = tf.random.uniform([n, 1, 1, 3], -sigma, sigma)
    od = tf.einsum("nhwc,cd->nhwd", hed * alpha + beta, rgb_from_hed)
    return tf.clip_by_value(tf.exp(-od), 0.0, 1.0)


def gamma_jitter(x, tf, g: float):
    """Per-image gamma, log-uniform in [1/(1+g), 1+g]: another camera's tone curve, which
    darkens or lightens the mid-tones (chromatin) more than the background and the stain
    extremes, unlike the linear gain and contrast of ``colour_jitter``."""
    n = tf.shape(x)[0]
    log_gamma = tf.random.uniform([n, 1, 1, 1], -np.log1p(g), np.log1p(g))
    return tf.pow(tf.clip_by_value(x, 1e-6, 1.0), tf.exp(log_gamma))


# Taps either side of the centre: 3 covers two standard deviations up to sigma 1.5, the
# blur the gate's fine-detail check already sends to a person.
BLUR_RADIUS = 3


def blur_jitter(x, tf, max_sigma: float):
    """Half of the images blurred by a Gaussian of sigma drawn from [0, max_sigma] pixels
    (separable, reflect padding): focus that drifts between captures, before the camera
    (so before the colour jitter and any compression)."""
    n = tf.shape(x)[0]
    sigma = tf.random.uniform([n], 0.0, max_sigma)
    sigma = tf.where(tf.random.uniform([n]) < 0.5, sigma, 0.0)
    taps = tf.range(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=tf.float32)
    # A sigma near zero gives a kernel of one tap: the image unchanged.
    kernels = tf.exp(-0.5 * tf.square(taps[None, :] / tf.maximum(sigma, 1e-3)[:, None]))
    kernels = kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)
    r = BLUR_RADIUS

    def one(args):
        image, kernel = args
        padded = tf.pad(image[None], [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
        down = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
        across = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
        out = tf.nn.depthwise_conv2d(padded, down, [1, 1, 1, 1], "VALID")
        return tf.nn.depthwise_conv2d(out, across, [1, 1, 1, 1], "VALID")[0]

    return tf.map_fn(one, (x, kernels), fn_output_signature=tf.float32)


def jpeg_jitter(x, tf, lowest_quality: int):
    """Half of the images saved again as JPEG at a quality drawn from [lowest_quality, 95],
    as the last step, as a capture is compressed after everything the optics and the camera
    did to it (so its 8x8 grid stays on the image's corner)."""
    n = tf.shape(x)[0]
    quality = tf.random.uniform([n], lowest_quality, 96, dtype=tf.int32)
    compress = tf.random.uniform([n]) < 0.5

    def one(args):
        image, q, c = args
        return tf.cond(c, lambda: tf.image.adjust_jpeg_quality(image, q), lambda: image)

    return tf.map_fn(one, (x, quality, compress), fn_output_signature=tf.float32)


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


def make_dataset(
    images,
    labels,
    batch_size: int,
    seed: int,
    augment: bool,
    shuffle: bool,
    stain_sigma: float = 0.0,
    jpeg_quality: int = 0,
    gamma: float = 0.0,
    blur_sigma: float = 0.0,
):
    """tf.data over uint8 arrays already decoded by ``preprocess``; augmentation in tf ops."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (scaled_in_graph(x), y), num_parallel_calls=2)
    if augment:

        def augment_batch(x, y):
            x = random_affine(x, tf)
            if blur_sigma > 0:
                x = blur_jitter(x, tf, blur_sigma)
            if stain_sigma > 0:
                x = stain_jitter(x, tf, stain_sigma)
            if gamma > 0:
                x = gamma_jitter(x, tf, gamma)
            x = colour_jitter(x, tf)
            if jpeg_quality > 0:
                x = jpeg_jitter(x, tf, jpeg_quality)
            return x, y

        ds = ds.map(augment_batch, num_parallel_calls=2)
    return ds.prefetch(2)


def class_weights(labels: np.ndarray, classes: int = 2) -> dict[int, float]:
    """Balanced weights: negatives and positives each contribute half of the loss.

    With a subtype head (``classes`` 4) every subtype gets the positive weight: the screening
    question stays balanced and the subtypes, which are near balanced, keep their shares.
    """
    binary = (labels > 0).astype(np.int64)
    n, pos = len(binary), int(binary.sum())
    negative, positive = n / (2.0 * (n - pos)), n / (2.0 * pos)
    return {0: negative, **{k: positive for k in range(1, classes)}}


# ---- model -----------------------------------------------------------------------------


def classes_loss(y_true, y_pred):
    """Cross-entropy over benign and the three subtypes, plus the screening question's own
    binary cross-entropy on p_leukemia = 1 - p_benign: the subtype term alone would let a
    confident wrong subtype cost as much as missing the leukemia."""
    import keras
    from keras import ops

    y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    subtype = keras.losses.sparse_categorical_crossentropy(y, y_pred)
    p_leukemia = ops.clip(1.0 - y_pred[:, 0], 1e-7, 1.0 - 1e-7)
    is_positive = ops.cast(y > 0, y_pred.dtype)
    screening = -(is_positive * ops.log(p_leukemia) + (1.0 - is_positive) * ops.log1p(-p_leukemia))
    return subtype + screening


def leukemia_auc():
    """ROC AUC of p_leukemia for a network with the subtype head (what early stopping
    watches, as for the binary networks)."""
    import keras
    from keras import ops

    class LeukemiaAUC(keras.metrics.AUC):
        def update_state(self, y_true, y_pred, sample_weight=None):
            positive = ops.cast(ops.reshape(y_true, (-1,)) > 0, "float32")
            return super().update_state(positive, 1.0 - y_pred[:, 0], sample_weight)

    return LeukemiaAUC(name="auc")


def build_model(arch: str, lr: float):
    import keras

    from model.architecture import ARCHITECTURES

    model = ARCHITECTURES[arch]()
    if model.output_shape[-1] == len(CLASSES):
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss=classes_loss,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), leukemia_auc()],
        )
        return model
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
    return _floats(history), int(stopper.best_epoch) + 1


def _floats(history) -> dict[str, list[float]]:
    """A Keras ``History``'s per-epoch logs as plain floats, for the history JSON."""
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def average_weights(model, train_ds, weights, images: np.ndarray, args) -> dict:
    """Stochastic weight averaging (Izmailov et al. 2018): train ``--average-epochs`` more
    epochs at a constant learning rate and keep the mean of their end-of-epoch weights.

    The mean lies in a wider, flatter part of the loss surface than any one epoch's weights,
    which is what an ensemble of those epochs would buy, at one network's cost per image.
    Batch-norm statistics belong to the weights they were measured with, so they are measured
    again for the averaged weights on the training images (``recompute_batch_norm``).
    """
    average = weight_average()
    model.optimizer.learning_rate.assign(args.average_lr)
    history = model.fit(
        train_ds,
        epochs=args.average_epochs,
        class_weight=weights,
        callbacks=[average, epoch_log()],
        verbose=2,
    )
    model.set_weights(average.mean())
    recompute_batch_norm(model, images, args.batch_size)
    return _floats(history)


def weight_average():
    """Keras callback: the running sum of the model's weights at each epoch's end; ``mean()``
    gives their average (in float64, so that many epochs add up without rounding)."""
    import keras

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.total: list[np.ndarray] = []
            self.epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            weights_now = self.model.get_weights()
            if not self.total:
                self.total = [w.astype(np.float64) for w in weights_now]
            else:
                for acc, w in zip(self.total, weights_now, strict=True):
                    acc += w
            self.epochs += 1

        def mean(self) -> list[np.ndarray]:
            return [(acc / self.epochs).astype(np.float32) for acc in self.total]

    return WeightAverage()


def recompute_batch_norm(model, images: np.ndarray, batch_size: int) -> None:
    """Each batch-norm layer's moving mean and variance set to the average over ``images`` (in
    batches, unaugmented) of the batch statistics the current weights produce."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    for step, start in enumerate(range(0, len(images), batch_size)):
        for layer in norms:
            layer.momentum = step / (step + 1)  # a running mean over the batches seen so far
        model(scaled_in_graph(images[start : start + batch_size]), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


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
    model = build_model(args.arch, args.lr)
    height, width = model.input_shape[1:3]
    with_subtypes = model.output_shape[-1] == len(CLASSES)

    dataset = mdata.load_dataset(
        args.data, block=args.block, cache_dir=args.cache_dir, size=(width, height)
    )
    print(
        f"{len(dataset.records)} images at {width}x{height} ({len(dataset.skipped)} "
        f"undecodable skipped, {len(dataset.duplicates)} duplicates dropped)",
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
    targets = {k: d.classes if with_subtypes else d.labels for k, d in parts.items()}

    train_ds = make_dataset(
        parts["train"].images,
        targets["train"],
        args.batch_size,
        args.seed,
        augment=not args.no_augment,
        shuffle=True,
        stain_sigma=args.stain_jitter,
        jpeg_quality=args.jpeg_quality,
        gamma=args.gamma_jitter,
        blur_sigma=args.blur_jitter,
    )
    val_ds = make_dataset(
        parts["val"].images,
        targets["val"],
        args.batch_size,
        args.seed,
        augment=False,
        shuffle=False,
    )
    weights = class_weights(targets["train"], len(CLASSES) if with_subtypes else 2)
    if args.init is not None:
        model.set_weights(keras.saving.load_model(args.init, compile=False).get_weights())
    t_fit = time.monotonic()
    hist, best_epoch = fit(model, train_ds, val_ds, weights, args) if args.epochs else ({}, 0)
    if args.average_epochs:
        hist["averaging"] = average_weights(model, train_ds, weights, parts["train"].images, args)
    fit_seconds = time.monotonic() - t_fit
    export_weights(model, args.arch, out)
    history_path(out).write_text(json.dumps({"best_epoch": best_epoch, **hist}, indent=1) + "\n")

    # Scored from the written file, by the workers' loader (BN folded), with the card's
    # output kind and input size already in place.
    card: CardData = {
        "name": args.arch,
        "architecture": args.arch,
        "params": int(model.count_params()),
        "threshold": 0.5,
        "output": P_CLASSES if with_subtypes else P_LEUKEMIA,
        "input_size": [int(width), int(height)],
        "metrics": {},
    }
    write_card(out, card)
    loaded = load_model(out, args.batch_size)
    val_scores = assess(loaded, parts["val"].images)
    test_scores = assess(loaded, parts["test"].images)
    p_val, p_test = val_scores.p_leukemia, test_scores.p_leukemia
    threshold = mm.choose_threshold(parts["val"].labels, p_val, args.target_sensitivity)
    test_groups = [r.group for r in parts["test"].records]
    card.update(
        {
            "threshold": threshold,
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
                "loss": "cross-entropy over benign/Early pre-B/Pre-B/Pro-B + binary "
                "cross-entropy on p_leukemia"
                if with_subtypes
                else "binary_crossentropy",
                "batch_size": args.batch_size,
                "early_stopping": f"{args.monitor}, patience {args.patience}, "
                "best weights restored",
                "class_weight": {str(k): v for k, v in weights.items()},
                "augmentation": augmentation_text(args),
                "initialised_from": str(args.init) if args.init else "random",
                "weight_averaging": f"mean of the weights after each of {args.average_epochs} "
                f"epochs at Adam lr={args.average_lr}, batch norm measured again"
                if args.average_epochs
                else "none",
            },
            "intended_use": INTENDED_USE,
        }
    )
    if with_subtypes:
        assert val_scores.subtype_probs is not None and test_scores.subtype_probs is not None
        card["subtype_metrics"] = {
            "test": mm.subtype_metrics(parts["test"].classes, test_scores.subtype_probs),
            "validation": mm.subtype_metrics(parts["val"].classes, val_scores.subtype_probs),
        }
    write_card(out, card)
    print(json.dumps({k: card["metrics"][k] for k in ("auc", "sensitivity", "specificity")}))
    if with_subtypes:
        print(f"subtype accuracy, test positives: {card['subtype_metrics']['test']['accuracy']}")
    print(f"threshold {threshold:.4f}; wrote {out} and {card_path(out).name}", flush=True)
    if args.no_gate:
        return 0
    # A network without a gate sends every image to a person: fit it now. This calibrates
    # the scores and chooses the threshold again, on calibrated validation scores.
    from model import fit_gate

    gate_args = ["--model", str(out), "--data", str(args.data)]
    if args.other_lab is not None:
        gate_args += ["--other-lab", str(args.other_lab)]
    if args.plots is not None:
        gate_args += ["--plots", str(args.plots)]
    return fit_gate.main(gate_args)


def augmentation_text(args: argparse.Namespace) -> str:
    if args.no_augment:
        return "none"
    stain = (
        f"optical-density stain jitter sigma {args.stain_jitter} (HED scale and shift); "
        if args.stain_jitter > 0
        else ""
    )
    return (
        "flips h/v, rotation +-180deg, zoom 15%, shift 10%, shear 0.1 (one composed "
        "affine resampling, reflect fill); "
        + (f"half blurred, Gaussian sigma 0-{args.blur_jitter:g} px; " if args.blur_jitter else "")
        + stain
        + (
            f"gamma 1/{1 + args.gamma_jitter:g}-{1 + args.gamma_jitter:g}; "
            if args.gamma_jitter
            else ""
        )
        + "per-channel gain 0.85-1.15, brightness +-0.1, contrast 0.75-1.25, "
        "hue +-0.05, saturation 0.6-1.4"
        + (
            f"; half saved again as JPEG at quality {args.jpeg_quality}-95"
            if args.jpeg_quality
            else ""
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
