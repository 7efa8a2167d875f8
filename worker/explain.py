"""Making the explanation heatmaps of scored images that go to a person (``model.explain``).

A task carries image ids. For each image, the result of the model loaded in this worker is
taken if it goes to a person (route flagged or manual review) and has no heatmap yet
(``db.lifecycle.heatmaps_to_make``); a result of another model version is left alone, since
its heatmap must come from the network that made its score. The original is read from the
store and preprocessed exactly as scoring did, Grad-CAM runs on the whole chunk at once, each
overlay PNG is stored content-addressed like an original, and the keys are recorded with
``db.lifecycle.set_heatmaps``, which never replaces one. Running a task twice makes nothing
twice: the second finds nothing left to make.

It runs after scoring, on a queue of its own that scoring workers take last
(``worker.celery_app.EXPLAIN_QUEUE``), so it never holds up the bulk path.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import lifecycle
from db.lifecycle import HeatmapWanted
from leukoscreen.storage import StorageUnavailable, Store
from model.card import ModelCard
from model.explain import overlay_png
from model.preprocess import prepare

log = logging.getLogger(__name__)

# An overlay is about 8 KB; anything near this limit would be a bug, not a heatmap.
MAX_OVERLAY_BYTES = 1024 * 1024


class Explainer(Protocol):
    sha256: str
    card: ModelCard

    def heatmaps(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class ExplainOutcome:
    made: int = 0
    skipped: int = 0  # nothing to make: cleared, made already, another model's, purged
    failed: int = 0  # the original could not be read or decoded
    seconds_per_image: float = 0.0  # Grad-CAM and rendering, without reading the originals


def _pixels(store: Store, key: str, card: ModelCard) -> np.ndarray | Exception:
    try:
        return prepare(store.read(key), None, card.input_size, with_quality=False).pixels
    except StorageUnavailable:
        raise  # the store is down, not the image: the task retries
    except Exception as exc:  # that image's own problem; the others go on
        return exc


def explain_chunk(
    sessions: sessionmaker[Session],
    store: Store,
    model: Explainer,
    version_id: int,
    image_ids: Sequence[int],
    decode_pool: ThreadPoolExecutor | None = None,
) -> ExplainOutcome:
    outcome = ExplainOutcome()
    wanted = lifecycle.heatmaps_to_make(sessions, image_ids, version_id)
    outcome.skipped = len(set(image_ids)) - len(wanted)
    if not wanted:
        return outcome

    def load(item: HeatmapWanted) -> np.ndarray | Exception:
        return _pixels(store, item.storage_key, model.card)

    loaded = list(decode_pool.map(load, wanted) if decode_pool else map(load, wanted))
    good = [(w, px) for w, px in zip(wanted, loaded, strict=True) if isinstance(px, np.ndarray)]
    for w, px in zip(wanted, loaded, strict=True):
        if not isinstance(px, np.ndarray):
            log.warning("no heatmap for image %d: %s: %s", w.image_id, type(px).__name__, px)
    outcome.failed = len(wanted) - len(good)
    if not good:
        return outcome
    started = time.perf_counter()
    maps = model.heatmaps(np.stack([px for _, px in good]))
    pngs = [overlay_png(heat) for heat in maps]
    outcome.seconds_per_image = (time.perf_counter() - started) / len(good)
    keys: dict[int, str] = {}
    for (item, _), png in zip(good, pngs, strict=True):
        staged = store.stage(io.BytesIO(png), MAX_OVERLAY_BYTES)
        store.put(staged)
        keys[item.result_id] = staged.sha256
    # Durable before the database names them, as the intake does for originals.
    store.flush()
    outcome.made = len(lifecycle.set_heatmaps(sessions, keys))
    outcome.skipped += len(keys) - outcome.made
    return outcome
