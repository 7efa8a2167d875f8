"""Folding inference-mode batch normalisation into the convolution before it.

At inference a BatchNormalization layer is a fixed per-channel affine map, so
``BN(conv(x))`` equals a convolution with scaled kernels and a shifted bias. Folding removes
one full pass over every activation map and lets TensorFlow's CPU graph optimiser fuse
Conv2D + BiasAdd + ReLU into one kernel. Scores agree with the unfolded network to float32
round-off (tested at 1e-5).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers


def _bn_scale_shift(bn: layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def chain_layers(network: keras.Model) -> list[keras.layers.Layer]:
    """A network's layers after its input, in order: a functional model lists its
    ``InputLayer`` first and a ``keras.Sequential`` one does not, and every replay of the chain
    (folding, bfloat16, the gate's features, Grad-CAM) must start at the same first layer."""
    return [layer for layer in network.layers if not isinstance(layer, layers.InputLayer)]


def is_chain(network: keras.Model) -> bool:
    """True when every layer feeds exactly the next one and the last is the output (the
    shape folding, the gate's feature replay and Grad-CAM handle).

    Judged on each layer's first call, the one that built the network: replaying the
    layers in another model (``model.gate_features.feature_network``) calls them again, which
    must not make the same network look like something else.
    """
    chain = network.layers
    if len(network.outputs) != 1 or network.outputs[0] is not chain[-1].output:
        return False
    for previous, layer in zip(chain, chain[1:], strict=False):
        nodes = layer._inbound_nodes
        inputs = nodes[0].input_tensors if nodes else []
        if len(inputs) != 1 or inputs[0] is not previous.output:
            return False
    return True


def _foldable(conv: keras.layers.Layer, bn: keras.layers.Layer) -> bool:
    return (
        isinstance(conv, layers.Conv2D)
        and isinstance(bn, layers.BatchNormalization)
        and conv.get_config().get("activation") == "linear"
        and bn.axis in (-1, [-1], 3, [3])
    )


def fold_batch_norm(network: keras.Model) -> keras.Model:
    """A copy of ``network`` with each Conv2D -> BatchNormalization pair merged.

    Networks without such pairs, or that are not a simple chain of layers, are returned
    unchanged: the optimisation is never worth a wrong answer.
    """
    chain = chain_layers(network)
    if not is_chain(network) or not any(
        _foldable(a, b) for a, b in zip(chain, chain[1:], strict=False)
    ):
        return network
    x = inputs = keras.Input(shape=network.input_shape[1:], name=network.inputs[0].name)
    i = 0
    while i < len(chain):
        layer = chain[i]
        if i + 1 < len(chain) and _foldable(layer, chain[i + 1]):
            bn = chain[i + 1]
            config = {**layer.get_config(), "use_bias": True, "name": layer.name + "_folded"}
            conv = layers.Conv2D.from_config(config)
            x = conv(x)
            kernel = np.asarray(layer.kernel, dtype=np.float64)
            bias = (
                np.asarray(layer.bias, dtype=np.float64)
                if layer.use_bias
                else np.zeros(kernel.shape[-1])
            )
            scale, shift = _bn_scale_shift(bn)
            conv.set_weights(
                [(kernel * scale).astype(np.float32), (bias * scale + shift).astype(np.float32)]
            )
            i += 2
            continue
        # A fresh copy, not the layer itself: the folded model must be a chain of its own
        # (the gate replays it), not share layers and graph nodes with the original.
        copy = layer.__class__.from_config(layer.get_config())
        x = copy(x)
        copy.set_weights(layer.get_weights())
        i += 1
    return keras.Model(inputs, x, name=network.name + "_folded")
