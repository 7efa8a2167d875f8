"""The drift alarm: does a finished batch look like the images the model was validated on?

When a batch completes, its scores, domain distances and quality measures are compared with
the validation split's deciles stored with the model version (``model_version.gate``) by the
population stability index (PSI) over those ten bins. A measure drifts when its PSI exceeds
``max(0.25, 36 / n)``: 0.25 is the usual "significant shift" mark, and 36 / n is above the
99.99th percentile of the PSI of n images drawn from the reference itself (PSI * n is about
chi-squared with 9 degrees of freedom, whose 99.99th percentile is 33.7; simulated with this
smoothing, 25-30 at the 99.9th), so that with nine measures checked a batch like the
validation images raises a false alarm well under 1% of the time, small batches included. Batches
of fewer than ``MIN_IMAGES`` scored images are not judged. The result is stored on the batch,
shown on its page and in its JSON, and an alarm is an audit event.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import record_event
from db.models import Batch, ModelVersion, Result

MIN_IMAGES = 50
PSI_MARK = 0.25
SMALL_BATCH_PSI = 36.0  # times 1/n: above the 99.99th percentile of chi-squared(9), 33.7


def psi(values: np.ndarray, edges: list[float]) -> float:
    """Population stability index of ``values`` against deciles ``edges`` (9 inner edges)."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    # Half a count in every bin: an empty bin would make the PSI infinite, and a tiny floor
    # instead would make small batches look drifted.
    actual = (counts + 0.5) / (len(values) + 0.5 * len(counts))
    expected = np.full_like(actual, 1.0 / (len(edges) + 1))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_bound(n: int) -> float:
    return max(PSI_MARK, SMALL_BATCH_PSI / max(n, 1))


def _values(rows: list[tuple[float, float | None, dict | None]], name: str) -> np.ndarray:
    vals: list[float | None]
    if name == "p_leukemia":
        vals = [p for p, _, _ in rows]
    elif name == "domain_distance":
        vals = [d for _, d, _ in rows]
    else:
        vals = [(q or {}).get(name) for _, _, q in rows]
    arr = np.array([v for v in vals if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def assess_batch(session: Session, batch_id: str) -> dict[str, Any]:
    """The drift verdict of one batch (not stored; ``check_completed`` stores it)."""
    rows = session.execute(
        select(
            Result.p_leukemia, Result.domain_distance, Result.quality, Result.model_version_id
        ).where(Result.batch_id == batch_id)
    ).all()
    n = len(rows)
    if n < MIN_IMAGES:
        return {"checked": False, "n": n, "why": f"fewer than {MIN_IMAGES} scored images"}
    version_id = Counter(r.model_version_id for r in rows).most_common(1)[0][0]
    gate = session.scalar(select(ModelVersion.gate).where(ModelVersion.id == version_id))
    reference = (gate or {}).get("reference") or {}
    if not reference:
        return {"checked": False, "n": n, "why": "the model version has no drift reference"}
    data = [(r.p_leukemia, r.domain_distance, r.quality) for r in rows]
    bound = psi_bound(n)
    measures = {}
    for name, edges in reference.items():
        values = _values(data, name)
        if len(values) < MIN_IMAGES:
            continue
        value = psi(values, edges)
        measures[name] = {
            "psi": round(value, 4),
            "batch_median": float(np.median(values)),
            "reference_median": float(edges[len(edges) // 2]),
            "drifted": value > bound,
        }
    drifted = sorted(k for k, v in measures.items() if v["drifted"])
    return {
        "checked": True,
        "n": n,
        "bound": round(bound, 4),
        "alarm": bool(drifted),
        "drifted": drifted,
        "measures": measures,
    }


def check_completed(session: Session, batch_ids: set[str]) -> None:
    """Judge every batch among ``batch_ids`` that is complete and not judged yet."""
    batches = session.scalars(
        select(Batch).where(
            Batch.id.in_(batch_ids), Batch.state == "complete", Batch.drift.is_(None)
        )
    ).all()
    for batch in batches:
        verdict = assess_batch(session, batch.id)
        batch.drift = verdict
        if verdict.get("alarm"):
            record_event(
                session,
                None,
                "batch.drift",
                batch.id,
                laboratory_id=batch.laboratory_id,
                drifted=verdict["drifted"],
                n=verdict["n"],
                psi={k: verdict["measures"][k]["psi"] for k in verdict["drifted"]},
            )


def describe(verdict: dict[str, Any] | None) -> str | None:
    """One sentence for people: what differs from the images the model was validated on."""
    if not verdict or not verdict.get("alarm"):
        return None
    parts = []
    for name in verdict["drifted"]:
        m = verdict["measures"][name]
        direction = "higher" if m["batch_median"] > m["reference_median"] else "lower"
        parts.append(
            f"{name.replace('_', ' ')} {direction} than validation images "
            f"(median {_fmt(m['batch_median'])} vs {_fmt(m['reference_median'])})"
        )
    return (
        f"These {verdict['n']} images differ from the images the model was validated on: "
        + "; ".join(parts)
        + ". Check the microscope, stain and capture settings before trusting cleared results."
    )


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)
