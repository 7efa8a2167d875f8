"""Loading a weights file and scoring batches with it (imports TensorFlow: workers only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.card import ModelCard, file_sha256, read_card, to_p_leukemia


@dataclass
class LoadedModel:
    path: Path
    sha256: str
    card: ModelCard
    batch_size: int
    _predict: object

    def score(self, images: np.ndarray) -> np.ndarray:
        """p_leukemia for a stack of preprocessed images, shape (N, 256, 256, 3)."""
        n = len(images)
        if n == 0:
            return np.zeros((0,), dtype=np.float64)
        out = np.empty((n,), dtype=np.float64)
        for start in range(0, n, self.batch_size):
            part = images[start : start + self.batch_size]
            # Pad to a fixed batch shape so the compiled graph is traced once, not per size.
            pad = self.batch_size - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
            raw = self._predict(part).numpy()  # type: ignore[attr-defined]
            out[start : start + self.batch_size] = to_p_leukemia(raw, self.card.output)[
                : self.batch_size - pad
            ]
        return out


def load_model(path: Path, batch_size: int = 32) -> LoadedModel:
    import keras
    import tensorflow as tf

    if not path.is_file():
        raise FileNotFoundError(
            f"model weights not found at {path}; set LEUKOSCREEN_MODEL_PATH to a .keras file"
        )
    from model.folding import fold_batch_norm

    network = fold_batch_norm(keras.saving.load_model(path, compile=False))
    spec = tf.TensorSpec((batch_size, *network.input_shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def predict(x: tf.Tensor) -> tf.Tensor:
        return network(x, training=False)

    return LoadedModel(
        path=path,
        sha256=file_sha256(path),
        card=read_card(path),
        batch_size=batch_size,
        _predict=predict,
    )
