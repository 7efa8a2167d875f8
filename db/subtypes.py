"""The B-ALL subtype of a result as the API, the exports and the pages give it.

A network with the subtype head (``model.card.P_CLASSES``) stores with each result the most
likely subtype and each subtype's probability *given leukemia* (``result.subtype`` and
``result.subtype_probs``); for other networks both are null. Every JSON representation of a
result carries both fields (``subtype_json``), the CSV export one column per subtype
(``SUBTYPE_COLUMNS``). The pages and the FHIR report show it only for images that go to a
person (``estimate``), in the words of ``caveat`` and ``page_words``: a model estimate
conditional on leukemia, never a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.card import SUBTYPE_LABELS, SUBTYPES
from model.gate import Route

# The CSV export's column of each subtype's probability given leukemia.
SUBTYPE_COLUMNS = {s: f"p_{s}" for s in SUBTYPES}
# The words of the pages and the FHIR report, one place for both (the review and single-image
# pages' scripts get them with ``page_words``).
HEADLINE = "Most likely subtype, if leukemic:"
CAVEAT = "a model estimate, conditional on leukemia; not a diagnosis"
CANNOT_JUDGE = "the model cannot judge this image, so do not rely on it"


def subtype_json(result: Any) -> dict[str, Any]:
    """The subtype fields of a result (or of a row with its ``subtype`` and ``subtype_probs``
    columns): both null without a result or from a network without the subtype head."""
    if result is None:
        return {"subtype": None, "subtype_probs": None}
    return {"subtype": result.subtype, "subtype_probs": result.subtype_probs}


@dataclass(frozen=True)
class SubtypeEstimate:
    """One result's subtype estimate, ready to be put in words."""

    subtype: str
    probs: dict[str, float]  # every subtype of ``SUBTYPES``, given leukemia

    @property
    def label(self) -> str:
        return SUBTYPE_LABELS[self.subtype]

    @property
    def probability(self) -> float:
        """The most likely subtype's probability given leukemia."""
        return self.probs[self.subtype]

    def labelled(self) -> list[tuple[str, str, float]]:
        """(key, display name, probability) of every subtype, in ``SUBTYPES`` order."""
        return [(s, SUBTYPE_LABELS[s], self.probs[s]) for s in SUBTYPES]


def estimate(subtype: str | None, probs: dict[str, Any] | None) -> SubtypeEstimate | None:
    """The estimate of a stored result, or None where there is none to show (no subtype head,
    or a value this version does not know)."""
    if subtype not in SUBTYPE_LABELS or not isinstance(probs, dict):
        return None
    try:
        values = {s: float(probs[s]) for s in SUBTYPES}
    except (KeyError, TypeError, ValueError):
        return None
    return SubtypeEstimate(subtype, values)


def caveat(route: str | None) -> str:
    """What to bear in mind about an image's estimate: always ``CAVEAT``; for an image the
    model cannot judge (manual review), that it must not be relied on at all."""
    return f"{CAVEAT}; {CANNOT_JUDGE}" if route == Route.MANUAL_REVIEW.value else CAVEAT


def page_words() -> dict[str, Any]:
    """The subtype's words for the pages' scripts (``LS.showSubtype``): display names in
    ``SUBTYPES`` order, headline and caveats."""
    return {
        "labels": [[s, SUBTYPE_LABELS[s]] for s in SUBTYPES],
        "headline": HEADLINE,
        "caveat": CAVEAT,
        "cannot_judge": CANNOT_JUDGE,
    }
