"""Explanation heatmaps: Grad-CAM for the screening networks (imports TensorFlow: workers only).

Method: Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017), applied to the leukemia score:

1. The image is the network's own input: ``model.preprocess.prepare`` at the card's
   ``input_size``, the pixels the worker scored.
2. The target is the leukemia log-odds, ``log p_leukemia - log(1 - p_leukemia)``, taken from
   the last layer's pre-activation so that it never saturates: the logit itself for a sigmoid
   ``p_leukemia`` network, its negative for ``p_normal``, and for the softmax over
   ``model.card.CLASSES`` (``lenet_lld_v2``) ``logsumexp(subtype logits) - benign logit``,
   which is ``log(sum of the three subtype probabilities) - log p_benign``. Calibration
   (``model.gate``) is a monotone map applied afterwards and is left out: it rescales every
   gradient alike, which the normalisation below removes.
3. ``A`` is the last convolution block's activation map, before that block's pooling (24x24x128
   for ``lenet_lld_v2`` at 224x224). The gradient of the log-odds with respect to ``A``,
   averaged over the positions, weighs each channel: ``w_k = mean_ij dL/dA_ijk``.
4. The map is ``ReLU(sum_k w_k A_k)``: where the activations raise the leukemia score. It is
   upsampled bilinearly to the input size (the convolutions are unpadded, so each cell of
   ``A`` sees a window around its place in the image; the usual Grad-CAM approximation) and
   divided by its maximum, per image, so it runs from 0 to 1. A map with no positive value
   (nothing raised the score) stays all zero.

The networks are plain chains of layers (``model.folding.is_chain``), so the map is computed
by replaying the chain layer by layer, as ``model.gate_features.feature_network`` does, on the
folded network that ``model.inference.load_model`` scores with; a batch-norm layer folded into
its convolution changes nothing in the map.

What it shows: which parts of the image the network's last convolutions responded to in the
direction of "leukemia", at a resolution of about 9 input pixels. It is not a segmentation,
not a measure of how sure the network is (every map is scaled to 1), and not evidence that
the network is right: a reviewer sees where it looked, not why. The review page says so.

``overlay_png`` renders a map as a small PNG (about 8 KB) at the network's input size with a
perceptual colormap (viridis, as a fixed 17-entry table interpolated in NumPy, so workers
need no plotting library) and an alpha proportional to the heat, in 32 steps: the page stacks
it over the image, stretched to the image's box as the network's input was stretched from
the original.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from model.card import P_CLASSES, P_LEUKEMIA, P_NORMAL, p_leukemia_column
from model.inference import padded_batches, require_pixels, scaled_in_graph

# matplotlib's viridis at 0, 1/16, ..., 1 (8-bit RGB). Linear interpolation between these
# stays within 6/255 of the full 256-entry table.
_VIRIDIS_ANCHORS = np.array(
    [
        [68, 1, 84],
        [72, 24, 106],
        [71, 45, 123],
        [66, 64, 134],
        [59, 82, 139],
        [51, 99, 141],
        [44, 114, 142],
        [38, 130, 142],
        [33, 145, 140],
        [31, 160, 136],
        [40, 174, 128],
        [63, 188, 115],
        [94, 201, 98],
        [132, 212, 75],
        [173, 220, 48],
        [216, 226, 25],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def _lut(anchors: np.ndarray) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(anchors))
    levels = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(levels, positions, anchors[:, c]) for c in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


VIRIDIS = _lut(_VIRIDIS_ANCHORS)  # (256, 3) uint8
# The hottest pixel is drawn at this opacity: the cell under it stays visible.
MAX_ALPHA = 0.65
# Steps of heat drawn: a palette PNG of 32 levels is about 8 KB at 224x224 and renders in
# 2 ms; 256 levels doubled the size for no difference a reviewer can see.
LEVELS = 32


def palette(max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """(256, 4) uint8 RGBA: entry i is viridis at i/255 with alpha i/255 x ``max_alpha``."""
    alpha = np.rint(np.arange(256) * max_alpha).astype(np.uint8)
    return np.concatenate([VIRIDIS, alpha[:, None]], axis=1)


def quantize(heat: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """(H, W) heat in [0, 1] -> palette indices 0..255 on ``levels`` evenly spaced steps."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    step = np.rint(np.clip(heat, 0.0, 1.0) * (levels - 1))
    return np.rint(step * (255.0 / (levels - 1))).astype(np.uint8)


def colorize(heat: np.ndarray, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """(H, W) heat in [0, 1] -> (H, W, 4) uint8 RGBA, what ``overlay_png`` draws: the
    viridis colour of the heat, alpha = heat x ``max_alpha``."""
    rgba: np.ndarray = palette(max_alpha)[quantize(heat)]
    return rgba


def overlay_png(heat: np.ndarray, max_alpha: float = MAX_ALPHA) -> bytes:
    """The overlay as PNG bytes: a palette image whose entries carry their own alpha (tRNS),
    pixels only, no metadata."""
    image = Image.fromarray(quantize(heat), "P")
    image.putpalette(palette(max_alpha).tobytes(), rawmode="RGBA")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _is_pooling(layer: Any) -> bool:
    from keras import layers

    return isinstance(layer, layers.MaxPooling2D | layers.AveragePooling2D)


def target_layer(network: Any) -> int:
    """Index in ``model.folding.chain_layers(network)`` of the last convolution block's
    activation: the layer that feeds the last 2-D pooling, or else the last layer with a
    spatial (H, W, C) output."""
    from model.folding import chain_layers

    chain = chain_layers(network)
    for i in range(len(chain) - 2, -1, -1):
        if _is_pooling(chain[i + 1]) and len(chain[i].output.shape) == 4:
            return i
    for i in range(len(chain) - 2, -1, -1):
        if len(chain[i].output.shape) == 4:
            return i
    raise ValueError(f"{network.name}: no convolution block to explain")


def _activation_name(layer: Any) -> str:
    return str(layer.get_config().get("activation", ""))


def leukemia_log_odds(head: Any, features: Any, output: str) -> Any:
    """log p_leukemia - log(1 - p_leukemia) per image, from the last (Dense) layer's input.

    Computed from the layer's logits where its activation allows, so that a confident score
    (p = 1 in float32) still has a finite log-odds and a useful gradient.
    """
    import tensorflow as tf

    activation = _activation_name(head)
    if activation in ("sigmoid", "softmax") and hasattr(head, "kernel"):
        logits = tf.matmul(features, head.kernel)
        if head.use_bias:
            logits = logits + head.bias
        if activation == "sigmoid" and output in (P_LEUKEMIA, P_NORMAL):
            z = logits[:, 0]
            return z if output == P_LEUKEMIA else -z
        if activation == "softmax" and output == P_CLASSES:
            return tf.reduce_logsumexp(logits[:, 1:], axis=1) - logits[:, 0]
    # Any other head: from its probabilities, kept away from 0 and 1.
    p = p_leukemia_column(head(features), output)
    eps = 1e-7
    p = tf.clip_by_value(p, eps, 1.0 - eps)
    return tf.math.log(p) - tf.math.log1p(-p)


class GradCam:
    """Grad-CAM maps for batches of preprocessed images (see the module docstring).

    ``network`` is a chain of layers ending in a Dense layer (every LeukoScreen network);
    ``output`` is the card's ``output``. Batches are padded to ``batch_size`` so the graph is
    traced once.
    """

    def __init__(self, network: Any, output: str, batch_size: int = 32) -> None:
        import tensorflow as tf

        from model.folding import chain_layers, is_chain

        if not is_chain(network):
            raise ValueError(f"{network.name}: Grad-CAM replays a chain of layers only")
        chain = chain_layers(network)
        k = target_layer(network)
        front, back, head = chain[: k + 1], chain[k + 1 : -1], chain[-1]
        self.batch_size = batch_size
        self.input_shape = tuple(int(d) for d in network.input_shape[1:])
        height, width = self.input_shape[:2]
        spec = tf.TensorSpec((batch_size, *self.input_shape), tf.uint8)

        @tf.function(input_signature=[spec], reduce_retracing=True)
        def maps(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            a = scaled_in_graph(pixels)
            for layer in front:
                a = layer(a)
            with tf.GradientTape() as tape:
                tape.watch(a)
                h = a
                for layer in back:
                    h = layer(h)
                log_odds = leukemia_log_odds(head, h, output)
            # Images are independent (inference mode): the gradient of the batch's sum is
            # each image's own gradient.
            grads = tape.gradient(log_odds, a)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * a, axis=-1, keepdims=True))
            cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            return tf.math.divide_no_nan(cam, peak), log_odds

        self._maps = maps

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) float32 maps in [0, 1] for (N, H, W, 3) uint8 pixels."""
        return self.explain(images)[0]

    def explain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The maps and each image's leukemia log-odds (uncalibrated), for checking."""
        n = len(require_pixels(images))
        height, width = self.input_shape[:2]
        out = np.zeros((n, height, width), dtype=np.float32)
        log_odds = np.zeros((n,), dtype=np.float64)
        for start, real, part in padded_batches(images, self.batch_size):
            cam, lo = self._maps(part)
            out[start : start + real] = cam.numpy()[:real]
            log_odds[start : start + real] = lo.numpy()[:real]
        return np.clip(out, 0.0, 1.0), log_odds
