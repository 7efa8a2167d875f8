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


def build_lenet_lld_bn(input_shape: tuple[int, int, int] = INPUT_SHAPE) -> keras.Model:
    """LeNet-LLD's four conv blocks with batch norm, global average pooling instead of the
    6.4M-parameter Flatten+Dense 256, and dropout. Same input contract and p_leukemia output.

    Batch-norm momentum is 0.9, not Keras' 0.99: with ~55 steps per epoch the slower moving
    averages lagged the weights, and validation AUC swung between 0.99 and 0.6 from one epoch
    to the next; with 0.9 such swings are rarer and end earlier in training (model card).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = _batch_norm_features(inputs)
    outputs = layers.Dense(1, activation="sigmoid", name="p_leukemia")(x)
    return keras.Model(inputs, outputs, name="lenet_lld_bn")


def _batch_norm_features(x, strided_stem: bool = False):
    """The four conv blocks with batch norm, pooled and dropped out: what the batch-norm
    networks feed their last layer. A strided stem convolves the first block at stride 2
    instead of pooling it: the same shapes from then on, a quarter of its work."""
    for filters in (16, 32, 64, 128):
        stride = 2 if strided_stem and filters == 16 else 1
        x = layers.Conv2D(filters, 3, strides=stride, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        if stride == 1:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(0.3)(x)


NATIVE_INPUT_SHAPE = (224, 224, 3)
SUBTYPE_CLASSES = 4  # benign, Early pre-B, Pre-B, Pro-B (``model.card.CLASSES``)


def build_lenet_lld_v2(input_shape: tuple[int, int, int] = NATIVE_INPUT_SHAPE) -> keras.Model:
    """Second generation: ``lenet_lld_bn`` at the smear images' own 224x224 and one softmax
    over benign and the three B-ALL subtypes.

    p_leukemia is one minus the benign probability and the subtype is read from the other
    three (``model.card``), so screening and subtyping share every feature and the network
    stays a plain chain of layers: batch-norm folding and the domain gate's feature replay
    work on it unchanged. 224x224 is what the camera wrote: upsampling to 256 added 31% of
    convolution work and a resize, and no information.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = _batch_norm_features(inputs)
    outputs = layers.Dense(SUBTYPE_CLASSES, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="lenet_lld_v2")


def build_lenet_lld_v2s(input_shape: tuple[int, int, int] = NATIVE_INPUT_SHAPE) -> keras.Model:
    """``lenet_lld_v2`` with a strided stem: the first 3x3 convolution at stride 2 replaces
    the first block's full-resolution convolution and pooling, which took a quarter of the
    network's time on a CPU (``docs/performance.md``)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = _batch_norm_features(inputs, strided_stem=True)
    outputs = layers.Dense(SUBTYPE_CLASSES, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="lenet_lld_v2s")


ARCHITECTURES = {
    "lenet_lld": build_lenet_lld,
    "lenet_lld_bn": build_lenet_lld_bn,
    "lenet_lld_v2": build_lenet_lld_v2,
    "lenet_lld_v2s": build_lenet_lld_v2s,
}
