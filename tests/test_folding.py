"""Batch-norm folding: the workers' faster network must give the same scores."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model.architecture import build_lenet_lld, build_lenet_lld_bn  # noqa: E402
from model.folding import fold_batch_norm  # noqa: E402


def bn_network_with_trained_statistics() -> keras.Model:
    """LeNet-LLD-BN whose batch-norm layers are far from identity, as after training."""
    # Seeded: the initial kernels otherwise depend on which tests ran before, and some draws
    # push every output onto the sigmoid's flat end.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    network = build_lenet_lld_bn()
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n).astype(np.float32),  # gamma
                    rng.normal(0.0, 0.5, n).astype(np.float32),  # beta
                    rng.normal(0.0, 0.3, n).astype(np.float32),  # moving mean
                    rng.uniform(0.01, 0.5, n).astype(np.float32),  # moving variance
                ]
            )
    # A small output layer keeps the sigmoid off its flat ends, where any two networks agree.
    head = network.get_layer("p_leukemia")
    head.set_weights([rng.normal(0.0, 0.02, head.kernel.shape).astype(np.float32), np.zeros(1)])
    return network


def test_folded_network_scores_like_the_original_within_1e_5():
    network = bn_network_with_trained_statistics()
    folded = fold_batch_norm(network)
    images = np.random.default_rng(1).random((6, 256, 256, 3), dtype=np.float32)
    expected = network(images, training=False).numpy()
    got = folded(images, training=False).numpy()
    assert expected.min() > 0.01 and expected.max() < 0.99, "outputs must not be saturated"
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_folding_removes_every_batch_norm_layer_and_keeps_the_original_intact():
    network = bn_network_with_trained_statistics()
    before = [w.copy() for w in network.get_weights()]
    folded = fold_batch_norm(network)
    assert not any(isinstance(x, keras.layers.BatchNormalization) for x in folded.layers)
    assert sum(isinstance(x, keras.layers.BatchNormalization) for x in network.layers) == 4
    for old, new in zip(before, network.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_networks_without_batch_norm_are_returned_unchanged():
    network = build_lenet_lld()
    assert fold_batch_norm(network) is network


def test_a_strided_stem_folds_and_scores_like_the_original():
    from model.architecture import build_lenet_lld_v2s

    keras.utils.set_random_seed(0)
    network = build_lenet_lld_v2s()
    rng = np.random.default_rng(2)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n).astype(np.float32),
                    rng.normal(0.0, 0.5, n).astype(np.float32),
                    rng.normal(0.0, 0.3, n).astype(np.float32),
                    rng.uniform(0.01, 0.5, n).astype(np.float32),
                ]
            )
    folded = fold_batch_norm(network)
    assert folded.layers[1].strides == (2, 2)
    images = rng.random((4, 224, 224, 3), dtype=np.float32)
    np.testing.assert_allclose(
        folded(images, training=False).numpy(), network(images, training=False).numpy(), atol=1e-5
    )


def test_every_architecture_is_offered_by_name_without_keras():
    from model.architecture import ARCHITECTURES
    from model.card import ARCHITECTURE_NAMES

    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES


def test_a_chain_stays_a_chain_after_the_gate_replays_its_layers():
    from model.folding import is_chain
    from model.gate import MEAN_AND_STD
    from model.gate_features import feature_network

    network = fold_batch_norm(bn_network_with_trained_statistics())
    assert is_chain(network)
    assert feature_network(network, MEAN_AND_STD) is not None  # calls every layer a second time
    assert is_chain(network)


def test_branches_and_reused_layers_are_not_chains_and_are_not_folded():
    from keras import layers

    from model.folding import is_chain

    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(3, 3, padding="same", use_bias=False)(inputs)
    b = layers.BatchNormalization()(a)
    branched = keras.Model(inputs, layers.Add()([b, inputs]))
    assert not is_chain(branched)
    assert fold_batch_norm(branched) is branched

    twice = layers.Conv2D(3, 3, padding="same")
    relu = layers.Activation("relu")
    reused = keras.Model(inputs, twice(relu(twice(inputs))))
    assert not is_chain(reused)


def test_a_sequential_network_is_folded_replayed_and_explained_from_its_first_layer():
    """keras.Sequential lists no InputLayer: every replay must still start at its first
    convolution, and give what the same layers give as a functional model."""
    from model.explain import GradCam
    from model.gate import MEAN_AND_STD
    from model.gate_features import feature_network
    from model.precision import BFLOAT16, in_precision

    functional = bn_network_with_trained_statistics()
    fresh = [type(x).from_config(x.get_config()) for x in functional.layers[1:]]
    sequential = keras.Sequential([keras.Input(functional.input_shape[1:]), *fresh])
    for new, old in zip(fresh, functional.layers[1:], strict=True):
        new.set_weights(old.get_weights())
    assert not isinstance(sequential.layers[0], keras.layers.InputLayer)
    images = np.random.default_rng(2).random((2, 256, 256, 3), dtype=np.float32)
    expected = functional(images, training=False).numpy()

    folded = fold_batch_norm(sequential)
    assert not any(isinstance(x, keras.layers.BatchNormalization) for x in folded.layers)
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected, atol=1e-5)

    both = [feature_network(n, MEAN_AND_STD) for n in (functional, sequential)]
    assert both[0] is not None and both[1] is not None
    (score_f, feats_f), (score_s, feats_s) = (n(images, training=False) for n in both)
    np.testing.assert_allclose(score_s.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(feats_s.numpy(), feats_f.numpy(), rtol=1e-5, atol=1e-5)

    reduced = in_precision(sequential, BFLOAT16)
    assert isinstance(reduced.layers[1], keras.layers.Conv2D)
    assert reduced.layers[1].dtype_policy.name == "float32"  # the first block stays float32
    np.testing.assert_allclose(reduced(images, training=False).numpy(), expected, atol=0.05)

    pixels = (images * 255).astype(np.uint8)
    both_chains = (functional, sequential)
    explained = [GradCam(n, "p_leukemia", batch_size=2).explain(pixels) for n in both_chains]
    np.testing.assert_allclose(explained[1][1], explained[0][1], atol=1e-5)  # log-odds
    np.testing.assert_allclose(explained[1][0], explained[0][0], atol=1e-4)  # maps
