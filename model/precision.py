"""The arithmetic a worker's network runs in: float32, or bfloat16 where the CPU has it.

On a CPU with AVX-512 BF16 (or AMX) oneDNN's bfloat16 convolutions are about 1.5x faster
than float32 (docs/performance.md), and the convolutions are most of a worker's time.
bfloat16 keeps float32's range with 8 bits of mantissa, so only the convolution blocks after
the first run in it: oneDNN accumulates their sums in float32, and everything from the global
pooling on (the classifier head, the gate's features, the probabilities) is float32 again. The
first block stays float32 because it was measured to matter: in bfloat16 it moved p_leukemia
by up to 0.10 on the validation split (0.016 without it) and domain distances by up to 80%.

What bfloat16 changes in every route is measured by ``model.precision_check``, which the
training command runs and records in the card (``python -m model.precision_check --write`` for
a card fitted before): ``auto`` uses bfloat16 only for a model whose card shows that check
with no route changed to cleared (``checked``). A result scored this way carries a model
version of its own (``model.gate.model_version``). Training, evaluation and Grad-CAM stay
float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
PRECISIONS = ("auto", FLOAT32, BFLOAT16)

# CPU flags (Linux /proc/cpuinfo names) under which oneDNN runs bfloat16 convolutions natively;
# elsewhere it would emulate them, slower than float32.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags, or an empty set where the system does not say."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def validate(setting: str, name: str = "precision") -> None:
    """Refuse a precision that is none of ``PRECISIONS`` (ValueError naming it ``name``)."""
    if setting not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, not {setting!r}")


def for_model(setting: str, weights: Path, on_gpu: bool, onednn: bool) -> str:
    """``resolve`` for the weights at ``weights``, their card read for ``checked``: what a
    worker loading them uses (and what the benchmark reports for its worker)."""
    from model.card import read_card_data

    return resolve(setting, on_gpu, onednn=onednn, card_checked=checked(read_card_data(weights)))


def checked(card: Mapping[str, Any] | None) -> bool:
    """Whether a model's card records a bfloat16 check (``model.precision_check.record``, run
    by the training command) in which no image's route changed to cleared."""
    check = (card or {}).get("precision_check", {}).get(BFLOAT16)
    return bool(check) and check.get("changed_to_cleared") == 0


def resolve(
    setting: str,
    on_gpu: bool,
    flags: set[str] | None = None,
    onednn: bool = True,
    card_checked: bool = True,
) -> str:
    """The precision a worker uses for ``LEUKOSCREEN_PRECISION``: ``auto`` is bfloat16 on a
    CPU worker whose CPU has native bfloat16 and oneDNN on, for a model whose card shows it
    checked (``checked``); float32 anywhere else (a GPU worker's precision was not measured,
    so it keeps float32 unless asked)."""
    validate(setting)
    if setting != "auto":
        return setting
    if not card_checked:
        return FLOAT32
    # Without oneDNN (an operator's TF_ENABLE_ONEDNN_OPTS=0) TensorFlow's own bfloat16
    # convolutions are not the fast kernels measured.
    if on_gpu or not onednn:
        return FLOAT32
    return BFLOAT16 if BF16_FLAGS & (cpu_flags() if flags is None else flags) else FLOAT32


def version_name(name: str, precision: str) -> str:
    """A model version's name as pages, exports and the worker list show it: the card's name,
    with the precision where it is not float32, so that a reviewer or an operator sees it."""
    return name if precision == FLOAT32 else f"{name} ({precision})"


def in_precision(network: Any, precision: str) -> Any:
    """A copy of a chain ``network`` whose convolution blocks compute in ``precision``.

    Layers from the second convolution up to the first global pooling or flattening get
    Keras' ``mixed_bfloat16`` policy (float32 weights, cast as they are used); the first
    convolution block, that layer and the rest stay float32 and cast their input back.
    ``float32`` or a network that is not a simple chain comes back as is.
    """
    import keras
    from keras import layers

    from model.folding import chain_layers, is_chain

    if precision == FLOAT32 or not is_chain(network):
        return network
    if precision != BFLOAT16:
        raise ValueError(f"unknown precision {precision!r}")
    head = (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.Flatten)
    x = inputs = keras.Input(shape=network.input_shape[1:], name=network.inputs[0].name)
    policy, convolutions = FLOAT32, 0
    for layer in chain_layers(network):
        if isinstance(layer, layers.Conv2D):
            convolutions += 1
            if convolutions == 2:
                policy = "mixed_bfloat16"
        if isinstance(layer, head):
            policy = FLOAT32
        copy = layer.__class__.from_config({**layer.get_config(), "dtype": policy})
        x = copy(x)
        copy.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=network.name)
