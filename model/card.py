"""The model card: the one definition of ``X.json``, the facts that travel with ``X.keras``.

A weights file ``X.keras`` is described by ``X.json`` beside it. ``CardData`` lists every
field; ``write_card`` is the only writer (training, ``fit-gate``, ``model-init``) and
``read_card_data`` / ``read_card`` the only readers (inference, evaluation, the gate and the
Markdown renderer ``model/card_markdown.py``). Reading it needs no TensorFlow, so the API can
show model facts without loading the network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

DEFAULT_THRESHOLD = 0.5
P_LEUKEMIA = "p_leukemia"
P_NORMAL = "p_normal"
# A softmax over benign and the three B-ALL subtypes, in this order (``lenet_lld_v2``).
P_CLASSES = "p_classes"
OUTPUTS = (P_LEUKEMIA, P_NORMAL, P_CLASSES)
CLASSES = ("benign", "early_pre_b", "pre_b", "pro_b")
SUBTYPES = CLASSES[1:]
SUBTYPE_LABELS = {"early_pre_b": "Early pre-B", "pre_b": "Pre-B", "pro_b": "Pro-B"}
DEFAULT_INPUT_SIZE = (256, 256)  # the thesis network's, for cards written before gen 2
# The networks ``model.architecture`` builds, named here for command lines that must not
# import Keras to offer them.
ARCHITECTURE_NAMES = ("lenet_lld", "lenet_lld_bn", "lenet_lld_v2", "lenet_lld_v2s")


class CardData(TypedDict):
    """``X.json``, field by field. The first four are what scoring needs; the rest document
    how the weights were made (``model.train``) and what the gate was fitted on
    (``model.fit_gate``). ``model-init`` writes only the first four (and the gate fields when
    asked for a permissive gate), with a warning."""

    name: str
    threshold: float  # on the calibrated scale once a gate with calibration is fitted
    # P_LEUKEMIA; P_NORMAL for a network trained the other way round; P_CLASSES for a
    # softmax over ``CLASSES`` (p_leukemia and the subtype both come from it)
    output: str
    metrics: dict[str, Any]  # test split at ``threshold`` (``model.train.summarise``)
    architecture: NotRequired[str]
    input_size: NotRequired[list[int]]  # [width, height] the network takes; DEFAULT_INPUT_SIZE
    subtype_metrics: NotRequired[dict[str, Any]]  # test split, positives (``model.train``)
    params: NotRequired[int]
    operating_point: NotRequired[str]  # how the threshold was chosen
    validation: NotRequired[dict[str, Any]]
    colour_baseline: NotRequired[dict[str, Any]]
    # Training writes the weights' SHA-256; fit-gate replaces it with the model version
    # (``model.gate.model_version``: weights, threshold and gate together).
    sha256: NotRequired[str]
    data: NotRequired[dict[str, Any]]  # source, split file and sizes
    training: NotRequired[dict[str, Any]]  # command, epochs, optimizer, augmentation
    intended_use: NotRequired[str]
    gate: NotRequired[dict[str, Any]]  # ``Gate.describe()``: read by ``model.gate.read_gate``
    calibration: NotRequired[dict[str, Any]]
    gate_evaluation: NotRequired[dict[str, Any]]
    # What bfloat16 convolutions change (``model.precision_check.record``): per set of images
    # the routes that changed; ``auto`` uses bfloat16 only where none changed to cleared.
    precision_check: NotRequired[dict[str, Any]]
    warning: NotRequired[str]
    gate_warning: NotRequired[str]


@dataclass(frozen=True)
class ModelCard:
    """What scoring needs from the card (``read_card``)."""

    name: str
    threshold: float
    output: str = P_LEUKEMIA
    metrics: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (width, height) for ``preprocess``

    @property
    def has_subtypes(self) -> bool:
        return self.output == P_CLASSES


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def history_path(weights: Path) -> Path:
    """Per-epoch training log written beside the weights by ``model.train``."""
    return weights.with_suffix(".history.json")


def write_card(weights: Path, card: CardData) -> Path:
    """Write ``X.json`` beside ``weights``; returns its path.

    One space of indent and a final newline: the format of the shipped cards, so that a card
    read and written again is byte for byte the same (``tests/test_card.py``).
    """
    path = card_path(weights)
    path.write_text(json.dumps(card, indent=1) + "\n")
    return path


def read_card_data(weights: Path) -> CardData | None:
    """Every field of ``X.json``, or None when the weights have no card."""
    path = card_path(weights)
    if not path.is_file():
        return None
    data: CardData = json.loads(path.read_text())
    return data


def read_card(weights: Path) -> ModelCard:
    """The fields scoring needs; a network without a card gets its file name and a 0.5
    threshold."""
    data = read_card_data(weights)
    if data is None:
        return ModelCard(name=weights.stem, threshold=DEFAULT_THRESHOLD)
    path = card_path(weights)
    output = data.get("output", P_LEUKEMIA)
    if output not in OUTPUTS:
        raise ValueError(f"{path}: output must be one of {OUTPUTS}, not {output!r}")
    width, height = data.get("input_size", DEFAULT_INPUT_SIZE)
    return ModelCard(
        name=str(data.get("name", weights.stem)),
        threshold=float(data.get("threshold", DEFAULT_THRESHOLD)),
        output=output,
        metrics=dict(data.get("metrics", {})),
        input_size=(int(width), int(height)),
    )


def p_leukemia_column(raw: Any, output: str) -> Any:
    """The single place where a network's output, (N, outputs), becomes the probability of
    leukemia, (N,). Slicing and arithmetic only, so it serves NumPy arrays and TensorFlow
    tensors alike (``model.explain`` differentiates through it)."""
    if output == P_CLASSES:  # benign is the first class
        return 1.0 - raw[:, 0]
    return 1.0 - raw[:, 0] if output == P_NORMAL else raw[:, 0]


def to_p_leukemia(raw: np.ndarray, output: str) -> np.ndarray:
    """p_leukemia as float64 from a network's output in any shape Keras returns it."""
    raw = np.asarray(raw, dtype=np.float64)
    width = len(CLASSES) if output == P_CLASSES else 1
    result: np.ndarray = p_leukemia_column(raw.reshape(len(raw), width), output)
    return result


def to_subtype_probs(raw: np.ndarray, output: str) -> np.ndarray | None:
    """(N, 3) probabilities of ``SUBTYPES`` given leukemia (each row sums to 1), or None for a
    network without a subtype head. Conditional, so a flagged image's subtype reads the same
    whatever its p_leukemia; the benign probability is reported as p_leukemia's complement."""
    if output != P_CLASSES:
        return None
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, len(CLASSES))[:, 1:]
    return raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-12)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
