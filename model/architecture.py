"""LeNet-LLD, the thesis network, built exactly as described there."""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (256, 256, 3)


def build_lenet_lld(input_shape: tuple[int, int, int] = INPUT_SHAPE) -> keras.Model:
    """Four Conv2D 3x3 + MaxPool blocks (16, 32, 64, 128), Dense 256, sigmoid output.

    Input is an RGB image already scaled to [0, 1] (see ``model.preprocess``); the
    output is p_leukemia. 6,520,481 parameters at 256x256x3.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_leukemia")(x)
    return keras.Model(inputs, outputs, name="lenet_lld")
