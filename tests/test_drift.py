"""The per-batch drift alarm: stored on the batch when it completes, audited when it rings."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from db import drift
from db.lifecycle import complete_batches
from db.models import AuditEvent, Batch, Image, ImageState, ModelVersion, Result
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID

DECILES = [round(0.1 * k, 1) for k in range(1, 10)]
REFERENCE = {"p_leukemia": DECILES, "domain_distance": DECILES, "focus": DECILES}


def _seed(settings, n: int, shift: float, seed: int = 0) -> str:
    """A batch of n scored images whose measures are uniform on [shift, shift + 1)."""
    rng = np.random.default_rng(seed)
    sessions = session_factory(engine_for(settings.database_url))
    with sessions.begin() as s:
        version = s.scalar(select(ModelVersion).where(ModelVersion.sha256 == "d" * 64))
        if version is None:
            version = ModelVersion(
                sha256="d" * 64,
                name="t",
                threshold=0.5,
                metrics={},
                gate={"reference": REFERENCE},
            )
            s.add(version)
        batch = Batch(name="b", submitted_by="t", laboratory_id=DEFAULT_LAB_ID)
        s.add(batch)
        s.flush()
        for i in range(n):
            image = Image(
                batch=batch,
                sha256=f"{seed}-{i}",
                original_name=f"{i}.jpg",
                size_bytes=1,
                state=ImageState.SCORED.value,
            )
            s.add(image)
            s.flush()
            p = float(rng.uniform(0, 1))  # scores stay as validated
            s.add(
                Result(
                    image_id=image.id,
                    batch_id=batch.id,
                    model_version_id=version.id,
                    p_leukemia=p,
                    flagged=p >= 0.5,
                    threshold=0.5,
                    route="flagged" if p >= 0.5 else "cleared",
                    domain_distance=float(rng.uniform(shift, shift + 1)),
                    quality={"focus": float(rng.uniform(shift, shift + 1))},
                )
            )
        return batch.id


def _complete(settings, batch_id: str) -> tuple[dict, list[AuditEvent]]:
    sessions = session_factory(engine_for(settings.database_url))
    with sessions.begin() as s:
        complete_batches(s, {batch_id})
    with sessions() as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None and batch.state == "complete"
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "batch.drift")).all()
        return batch.drift, [e for e in events if e.target == batch_id]


def test_a_batch_like_the_validation_images_raises_no_alarm(db_settings):
    verdict, events = _complete(db_settings, _seed(db_settings, 200, shift=0.0))
    assert verdict["checked"] and not verdict["alarm"] and verdict["drifted"] == []
    assert events == [] and drift.describe(verdict) is None


def test_a_batch_far_from_the_reference_rings_is_audited_and_says_what_differs(db_settings):
    verdict, events = _complete(db_settings, _seed(db_settings, 200, shift=0.6))
    assert verdict["alarm"] and verdict["drifted"] == ["domain_distance", "focus"]
    assert verdict["measures"]["p_leukemia"]["drifted"] is False
    assert len(events) == 1 and events[0].details["drifted"] == ["domain_distance", "focus"]
    text = drift.describe(verdict)
    assert text is not None and "domain distance higher" in text and "200 images" in text


def test_too_few_images_are_not_judged(db_settings):
    verdict, events = _complete(db_settings, _seed(db_settings, drift.MIN_IMAGES - 1, shift=5.0))
    assert verdict["checked"] is False and events == []


def test_the_psi_bound_allows_for_small_batches():
    assert drift.psi_bound(10_000) == drift.PSI_MARK
    assert drift.psi_bound(50) == pytest.approx(36 / 50)
    rng = np.random.default_rng(4)
    for n in (50, 200, 1000):
        same = [drift.psi(rng.uniform(0, 1, n), DECILES) for _ in range(500)]
        # Batches drawn from the reference itself almost never pass the bound...
        assert np.mean(np.array(same) > drift.psi_bound(n)) < 0.005
    # ...while a real shift of a tenth of the range does, from a few hundred images on.
    shifted = [drift.psi(rng.uniform(0.15, 1.15, 300), DECILES) for _ in range(100)]
    assert np.mean(np.array(shifted) > drift.psi_bound(300)) > 0.9
