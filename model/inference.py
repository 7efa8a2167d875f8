"""Loading a weights file and scoring batches with it (imports TensorFlow: workers only)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.card import (
    ModelCard,
    file_sha256,
    read_card,
    read_card_data,
    to_p_leukemia,
    to_subtype_probs,
)
from model.gate import FEATURE_OFFSET, Gate, model_version, read_gate
from model.precision import FLOAT32, in_precision
from model.preprocess import INPUT_SCALE


def padded_batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, real images, batch) for each slice of ``batch_size`` images, the last one
    padded with zeros: a fixed batch shape lets the compiled graph be traced once, not per
    size."""
    for start in range(0, len(images), batch_size):
        part = images[start : start + batch_size]
        real = len(part)
        if real < batch_size:
            pad = np.zeros((batch_size - real, *part.shape[1:]), part.dtype)
            part = np.concatenate([part, pad])
        yield start, real, part


def scaled_in_graph(x: Any) -> Any:
    """``model.preprocess.scale`` as TensorFlow ops, for a uint8 batch inside a compiled graph."""
    import tensorflow as tf

    return tf.cast(x, tf.float32) * tf.constant(INPUT_SCALE, tf.float32)


def require_pixels(images: np.ndarray) -> np.ndarray:
    """The scoring and heatmap graphs take uint8 pixels (``model.preprocess.Prepared``); a
    float array would be an input already scaled, which they would scale again."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"expected uint8 pixels (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


@dataclass(frozen=True)
class Scores:
    p_leukemia: np.ndarray  # calibrated when the model has a gate
    domain_distance: np.ndarray  # NaN where the network has no gate or no features
    # (N, 3) probabilities of ``model.card.SUBTYPES`` given leukemia; None without that head
    subtype_probs: np.ndarray | None = None


@dataclass
class LoadedModel:
    path: Path
    sha256: str  # the model version: weights, threshold and gate together
    weights_sha256: str
    card: ModelCard
    gate: Gate | None
    batch_size: int
    precision: str
    _predict: Any
    # The folded float32 network: Grad-CAM replays it (``heatmaps``), off the bulk path.
    network: Any = None
    _gradcam: Any = None

    def assess(self, images: np.ndarray) -> Scores:
        """p_leukemia and domain distance for a stack of uint8 pixels (N, H, W, 3)."""
        n = len(require_pixels(images))
        p = np.empty((n,), dtype=np.float64)
        distance = np.full((n,), np.nan, dtype=np.float64)
        subtypes = np.full((n, 3), np.nan) if self.card.has_subtypes else None
        for start, real, part in padded_batches(images, self.batch_size):
            raw, dist = self._predict(part)
            raw = raw.numpy()[:real]
            prob = to_p_leukemia(raw, self.card.output)
            if subtypes is not None:
                subtypes[start : start + real] = to_subtype_probs(raw, self.card.output)
            if self.gate is not None:
                prob = self.gate.calibrate(prob)
                if dist is not None:
                    distance[start : start + real] = dist.numpy()[:real]
            p[start : start + real] = prob
        return Scores(p, distance, subtypes)

    def score(self, images: np.ndarray) -> np.ndarray:
        """p_leukemia alone (evaluation, benchmarks)."""
        return self.assess(images).p_leukemia

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Grad-CAM maps (N, H, W) in [0, 1] of the leukemia score for uint8 pixels
        (``model.explain``), from the same network that scored them. Traced on first use."""
        if self._gradcam is None:
            from model.explain import GradCam

            self._gradcam = GradCam(self.network, self.card.output, self.batch_size)
        maps: np.ndarray = self._gradcam(images)
        return maps


def load_model(path: Path, batch_size: int = 32, precision: str = FLOAT32) -> LoadedModel:
    """The weights at ``path`` ready to score batches of ``batch_size``, their convolutions in
    ``precision`` (``model.precision``; a worker resolves its setting first)."""
    import keras
    import tensorflow as tf

    if not path.is_file():
        raise FileNotFoundError(
            f"model weights not found at {path}; set LEUKOSCREEN_MODEL_PATH to a .keras file"
        )
    from model.folding import fold_batch_norm
    from model.gate_features import feature_network

    network = fold_batch_norm(keras.saving.load_model(path, compile=False))
    scoring = in_precision(network, precision)
    raw_card = read_card_data(path)
    gate = read_gate(path, raw_card)
    with_features = feature_network(scoring, gate.block_statistics) if gate is not None else None
    spec = tf.TensorSpec((batch_size, *network.input_shape[1:]), tf.uint8)
    if gate is not None:
        # The domain distance (``Gate.domain_distance``) inside the same graph: done in NumPy,
        # its matrix product woke OpenBLAS's spinning threads, which then slowed the next
        # batch of the network by a third.
        whitening = tf.constant(gate.whitening, tf.float32)
        whitened_means = tf.constant(gate.whitened_means, tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def predict(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        x = scaled_in_graph(pixels)
        if with_features is None:
            return scoring(x, training=False), None
        raw, features = with_features(x, training=False)
        logs = tf.math.log(tf.maximum(features, 0.0) + FEATURE_OFFSET)
        z = tf.matmul(logs, whitening)
        squared = tf.reduce_sum(tf.square(z[:, None, :] - whitened_means[None]), axis=2)
        return raw, tf.reduce_min(squared, axis=1)

    weights_sha256 = file_sha256(path)
    return LoadedModel(
        path=path,
        sha256=model_version(weights_sha256, raw_card, gate, precision),
        weights_sha256=weights_sha256,
        card=read_card(path),
        gate=gate,
        batch_size=batch_size,
        precision=precision,
        _predict=predict,
        network=network,
    )
