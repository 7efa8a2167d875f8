"""The B-ALL subtype of a result as the API and the exports give it.

A network with the subtype head (``model.card.P_CLASSES``) stores with each result the most
likely subtype and each subtype's probability *given leukemia* (``result.subtype`` and
``result.subtype_probs``); for other networks both are null. Every JSON representation of a
result carries both fields (``subtype_json``), the CSV export one column per subtype
(``SUBTYPE_COLUMNS``).
"""

from __future__ import annotations

from typing import Any

from model.card import SUBTYPES

# The CSV export's column of each subtype's probability given leukemia.
SUBTYPE_COLUMNS = {s: f"p_{s}" for s in SUBTYPES}


def subtype_json(result: Any) -> dict[str, Any]:
    """The subtype fields of a result (or of a row with its ``subtype`` and ``subtype_probs``
    columns): both null without a result or from a network without the subtype head."""
    if result is None:
        return {"subtype": None, "subtype_probs": None}
    return {"subtype": result.subtype, "subtype_probs": result.subtype_probs}
