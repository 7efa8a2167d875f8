"""The metadata that travels with a weights file: its card, threshold and output meaning.

A weights file ``X.keras`` is described by ``X.json`` beside it. Reading it needs no
TensorFlow, so the API can show model facts without loading the network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5
P_LEUKEMIA = "p_leukemia"
P_NORMAL = "p_normal"


@dataclass(frozen=True)
class ModelCard:
    name: str
    threshold: float
    output: str = P_LEUKEMIA
    metrics: dict[str, Any] = field(default_factory=dict)


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def history_path(weights: Path) -> Path:
    """Per-epoch training log written beside the weights by ``model.train``."""
    return weights.with_suffix(".history.json")


def read_card(weights: Path) -> ModelCard:
    path = card_path(weights)
    if not path.is_file():
        return ModelCard(name=weights.stem, threshold=DEFAULT_THRESHOLD)
    data = json.loads(path.read_text())
    output = data.get("output", P_LEUKEMIA)
    if output not in (P_LEUKEMIA, P_NORMAL):
        raise ValueError(f"{path}: output must be {P_LEUKEMIA!r} or {P_NORMAL!r}, not {output!r}")
    return ModelCard(
        name=str(data.get("name", weights.stem)),
        threshold=float(data.get("threshold", DEFAULT_THRESHOLD)),
        output=output,
        metrics=dict(data.get("metrics", {})),
    )


def to_p_leukemia(raw: np.ndarray, output: str) -> np.ndarray:
    """The single place where a network's output becomes the probability of leukemia."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    return 1.0 - raw if output == P_NORMAL else raw


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
