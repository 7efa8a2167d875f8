"""The features the domain gate measures, computed by the scoring network itself.

Imports Keras: workers and training only (``model.gate`` reads what these give, in NumPy).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from model.folding import chain_layers, is_chain
from model.gate import MEAN_ONLY


class BlockStatistics(layers.Layer):
    """Per channel, the mean (and, unless ``statistics`` is mean only, the standard deviation)
    of a block's activations over the image, in float32 whatever the block ran in."""

    def __init__(self, statistics: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.statistics = tuple(statistics)

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=(1, 2))
        if self.statistics == MEAN_ONLY:
            return mean
        spread = ops.sqrt(ops.mean(ops.square(x - mean[:, None, None, :]), axis=(1, 2)))
        return ops.concatenate([mean, spread], axis=-1)


def feature_network(network: keras.Model, statistics: tuple[str, ...]) -> keras.Model | None:
    """The same network with a second output: the features the domain gate measures.

    They are the input of the last layer (the penultimate features) and, per channel of each
    pooling block, the ``statistics`` of its activations over the image (``"mean"``, and
    ``"std"`` where the gate was fitted with it: ``model.gate.BLOCK_STATISTICS``),
    concatenated. Only a simple chain of layers can be replayed this way; any other network
    gets ``None`` and its images no domain distance.
    """
    if not is_chain(network):
        return None
    x = inputs = keras.Input(shape=network.input_shape[1:], name="gate_image")
    blocks: list[Any] = []
    *body, head = chain_layers(network)
    for layer in body:
        x = layer(x)
        if isinstance(layer, layers.MaxPooling2D):
            blocks.append(BlockStatistics(statistics, name=f"gate_block{len(blocks)}")(x))
    penultimate = x if len(x.shape) == 2 else layers.Flatten(name="gate_flat")(x)
    features = layers.Concatenate(name="gate_features")([penultimate, *blocks])
    return keras.Model(inputs, [head(x), features], name=network.name + "_gate")
