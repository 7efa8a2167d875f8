"""Scored images written straight into the database, for review tests that need no worker."""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from db.models import Batch, Image, ImageState, ModelVersion, Result
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID, Scope
from leukoscreen.storage import ContentStore

# What the command line and other system callers see: every laboratory.
EVERY_LAB = Scope(home=DEFAULT_LAB_ID, labs=None)


def seed_scored(
    database_url: str,
    scores: Sequence[float],
    threshold: float = 0.5,
    name: str = "seeded",
    file_names: Sequence[str] | None = None,
    storage_dir: Path | None = None,
    blobs: Sequence[bytes] | None = None,
    laboratory_id: int = DEFAULT_LAB_ID,
) -> tuple[str, list[int]]:
    """A batch whose images have these p_leukemia; returns (batch id, image ids in order).

    With ``storage_dir`` and ``blobs`` the originals are stored too, so pages can show them.
    """
    keys: list[str | None] = [None] * len(scores)
    if storage_dir is not None and blobs is not None:
        store = ContentStore(storage_dir)
        keys = [store.commit(store.stage(io.BytesIO(b), 10**8)) for b in blobs]
    sessions = session_factory(engine_for(database_url))
    with sessions.begin() as session:
        version = session.query(ModelVersion).filter_by(sha256="e" * 64).one_or_none()
        if version is None:
            version = ModelVersion(sha256="e" * 64, name="lenet_lld-test", threshold=threshold)
            session.add(version)
        batch = Batch(name=name, submitted_by="tests", laboratory_id=laboratory_id)
        session.add(batch)
        images = []
        for i, p in enumerate(scores):
            image = Image(
                batch=batch,
                # Distinct contents unless the same blobs are stored: byte-identical images
                # share one review (db.reviews).
                sha256=keys[i] or secrets.token_hex(32),
                original_name=file_names[i] if file_names else f"cell_{i:03d}.jpg",
                storage_key=keys[i],
                format="JPEG" if keys[i] else None,
                size_bytes=1,
                state=ImageState.SCORED.value,
            )
            session.add(image)
            images.append((image, p))
        session.flush()
        for image, p in images:
            session.add(
                Result(
                    image_id=image.id,
                    batch_id=batch.id,
                    model_version_id=version.id,
                    p_leukemia=p,
                    flagged=p >= threshold,
                    threshold=threshold,
                    route="flagged" if p >= threshold else "cleared",
                )
            )
        return batch.id, [image.id for image, _ in images]


def give_heatmap(database_url: str, storage_dir: Path, image_id: int, heat: float = 1.0) -> str:
    """Store an explanation overlay for the image's result, as a worker would; returns its key."""
    import numpy as np

    from db.lifecycle import set_heatmaps
    from model.explain import overlay_png

    store = ContentStore(storage_dir)
    ramp = np.outer(np.linspace(0.0, heat, 224), np.ones(224))
    key = store.commit(store.stage(io.BytesIO(overlay_png(ramp)), 10**6))
    sessions = session_factory(engine_for(database_url))
    with sessions() as session:
        result_id = session.scalars(select(Result.id).where(Result.image_id == image_id)).one()
    assert set_heatmaps(sessions, {result_id: key}) == [result_id]
    return key
