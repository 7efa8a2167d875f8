"""FHIR R4 reports of signed specimens: what a laboratory's LIS or EHR files against a sample.

One ``DiagnosticReport`` per signed specimen (its latest sign-off): the signed interpretation
as ``conclusion`` and ``conclusionCode``, status ``final`` (first sign-off) or ``amended``,
``issued`` at the signature, the signer as ``resultsInterpreter``, the specimen as a contained
``Specimen`` with its accession number, and one contained ``Observation`` per image the
signature covers (``p_leukemia`` as ``valueQuantity``; route, route reason, threshold, model
version and the pathologist's decision as components). An image that went to a person (flagged
or manual review) and was scored by a network with the subtype head has a second contained
``Observation``, derived from the first: the model's estimate of the B-ALL subtype given
leukemia (the most likely subtype as ``valueCodeableConcept``, each subtype's probability as a
component), noted as an estimate and not a diagnosis; a cleared image's is left out of the
report, as the pages leave it out (the CSV and JSON exports carry it). A batch exports its
signed specimens' reports as a ``Bundle`` of type ``collection``.

Built with ``fhir.resources``' R4B models (R4B is wire-compatible with R4 for these resources),
which validate every element as the resources are made: a report that is not valid FHIR is
never served. Codes without a standard code system are LeukoScreen's own (``CODE_SYSTEM``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from flask import Blueprint, Response
from sqlalchemy.orm import Session

from api import context
from api.auth import scope, specimen_scope
from db.errors import Conflict
from db.lifecycle import emit
from db.models import Batch, Interpretation, WebhookEvent
from db.progress import batch_specimen_ids
from db.specimens import (
    INTERPRETATION_TEXT,
    TO_PERSON,
    Signoff,
    Specimen,
    SpecimenImage,
    load_specimen,
)
from db.subtypes import SUBTYPE_COLUMNS, SubtypeEstimate, caveat, estimate
from db.tenancy import Scope, batch_or_404
from model.gate import REASON_TEXT, Route

bp = Blueprint("fhir", __name__, url_prefix="/api/v1")

FHIR_JSON = "application/fhir+json"
CODE_SYSTEM = "urn:leukoscreen:codes"
IDENTIFIER_SYSTEM = "urn:leukoscreen"
# Stable fullUrls in a bundle: the same report has the same urn:uuid in every export.
URN_NAMESPACE = uuid.UUID("5d6b6d1e-8a5e-4c1b-9a51-6c2f0f1f4a11")
HL7 = "http://terminology.hl7.org/CodeSystem"
UCUM = "http://unitsofmeasure.org"
# flagged: abnormal; cleared: normal; manual review: the model could not judge (indeterminate).
INTERPRETATION = {
    Route.FLAGGED.value: ("A", "Abnormal"),
    Route.CLEARED.value: ("N", "Normal"),
    Route.MANUAL_REVIEW.value: ("IND", "Indeterminate"),
}
DISCLAIMER = (
    "Screening aid: the per-image probabilities come from the LeukoScreen model; the conclusion "
    "is the signing pathologist's."
)


def _code(code: str, display: str, system: str = CODE_SYSTEM) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _component(code: str, display: str, **value: Any) -> dict[str, Any]:
    return {"code": _code(code, display), **value}


def _probability(value: float) -> dict[str, Any]:
    return {"value": round(value, 6), "unit": "probability", "system": UCUM, "code": "1"}


def _signed(image: SpecimenImage, signed: list[Any]) -> tuple[str | None, str | None]:
    """The image's route and decision as the signature covered them."""
    _state, route, decision, _seq = (signed + [None] * 4)[:4]
    return route or image.route, decision


def _about_image(image: SpecimenImage, kind: str, code: dict[str, Any]) -> dict[str, Any]:
    """What every observation of a field image starts with; ``kind`` names it among them."""
    return {
        "id": f"{kind}-{image.image_id}",
        "identifier": [{"system": f"{IDENTIFIER_SYSTEM}:{kind}", "value": str(image.image_id)}],
        "status": "final",
        "category": [
            _code("laboratory", "Laboratory", f"{HL7}/observation-category"),
        ],
        "code": code,
        "specimen": {"reference": "#specimen"},
        "note": [{"text": f"field image {image.file_name}"}],
    }


def _observation(image: SpecimenImage, signed: list[Any]) -> dict[str, Any]:
    # What the signature covered (route and decision at signing), scores as stored.
    route, decision = _signed(image, signed)
    obs = _about_image(
        image, "image", _code("p-leukemia", "Probability of leukemia (blood smear field image)")
    )
    if image.p_leukemia is None:
        obs["status"] = "cancelled"
        obs["dataAbsentReason"] = _code("error", "Error", f"{HL7}/data-absent-reason")
        return {"resourceType": "Observation", **obs}
    obs["valueQuantity"] = _probability(image.p_leukemia)
    if route in INTERPRETATION:
        code, display = INTERPRETATION[route]
        obs["interpretation"] = [
            _code(code, display, f"{HL7}/v3-ObservationInterpretation"),
        ]
    components = []
    if route:
        components.append(
            _component("route", "Screening route", valueCodeableConcept=_code(route, route))
        )
    if image.route_reason:
        text = REASON_TEXT.get(image.route_reason, image.route_reason)
        components.append(
            _component(
                "route-reason",
                "Why the model could not judge the image",
                valueCodeableConcept=_code(image.route_reason, text),
            )
        )
    if image.threshold is not None:
        components.append(
            _component(
                "threshold",
                "Operating threshold",
                valueQuantity=_probability(image.threshold),
            )
        )
    if image.model_version:
        components.append(
            _component("model-version", "Model version", valueString=image.model_version)
        )
        obs["device"] = {"display": f"LeukoScreen model {image.model_version}"}
    if decision:
        components.append(
            _component(
                "review-decision",
                "Pathologist's decision on the image",
                valueCodeableConcept=_code(decision, decision),
            )
        )
    if components:
        obs["component"] = components
    return {"resourceType": "Observation", **obs}


def _subtype_observation(
    image: SpecimenImage, signed: list[Any], found: SubtypeEstimate
) -> dict[str, Any]:
    """The model's estimate of the image's B-ALL subtype given leukemia, derived from the
    image's observation (``_observation``)."""
    route, _ = _signed(image, signed)
    obs = _about_image(
        image,
        "image-subtype",
        _code("b-all-subtype", "Model estimate of B-ALL subtype (given leukemia)"),
    )
    obs["note"] = [{"text": f"field image {image.file_name}: {caveat(route)}"}]
    obs["derivedFrom"] = [{"reference": f"#image-{image.image_id}"}]
    obs["valueCodeableConcept"] = _code(found.subtype, found.label)
    obs["component"] = [
        _component(
            SUBTYPE_COLUMNS[key],
            f"Probability of {label} given leukemia",
            valueQuantity=_probability(p),
        )
        for key, label, p in found.labelled()
    ]
    if image.model_version:
        obs["device"] = {"display": f"LeukoScreen model {image.model_version}"}
    return {"resourceType": "Observation", **obs}


def _image_observations(image: SpecimenImage, signed: list[Any]) -> list[dict[str, Any]]:
    """The image's observation, and its subtype estimate when it went to a person."""
    route, _ = _signed(image, signed)
    found = estimate(image.subtype, image.subtype_probs) if route in TO_PERSON else None
    observations = [_observation(image, signed)]
    if found is not None and image.p_leukemia is not None:
        observations.append(_subtype_observation(image, signed, found))
    return observations


def report_id(signoff: Signoff) -> str:
    return f"signoff-{signoff.id}"


def diagnostic_report(specimen: Specimen) -> DiagnosticReport:
    """The report of the specimen's latest sign-off (Conflict when it has none)."""
    signoff = specimen.latest_signoff
    if signoff is None:
        raise Conflict(
            f"specimen {specimen.specimen_id} is not signed (status {specimen.status.value}): "
            "its report exists once a pathologist signs it"
        )
    covered = signoff.signed_content.get("images", {})
    images = [i for i in specimen.images if str(i.image_id) in covered]
    observations = [
        o for i in images for o in _image_observations(i, list(covered[str(i.image_id)]))
    ]
    sample: dict[str, Any] = {
        "resourceType": "Specimen",
        "id": "specimen",
        "accessionIdentifier": {
            "system": f"{IDENTIFIER_SYSTEM}:accession",
            "value": specimen.specimen_id,
        },
        "type": {"text": "Peripheral blood smear"},
    }
    if specimen.source:
        sample["note"] = [{"text": specimen.source}]
    interpretation = Interpretation(signoff.interpretation)
    conclusion = INTERPRETATION_TEXT[interpretation].capitalize() + "."
    if signoff.comment.strip():
        conclusion += " " + signoff.comment.strip()
    if signoff.amends_id:
        conclusion += f" (Amends report signoff-{signoff.amends_id}.)"
    # Validated as a whole: every element of the report and its contained resources.
    return DiagnosticReport.model_validate(
        {
            "resourceType": "DiagnosticReport",
            "id": report_id(signoff),
            "identifier": [{"system": f"{IDENTIFIER_SYSTEM}:signoff", "value": str(signoff.id)}],
            "status": "amended" if signoff.amends_id else "final",
            "category": [_code("HM", "Hematology", f"{HL7}/v2-0074")],
            "code": _code("leukemia-screen", "Blood smear leukemia screening"),
            "issued": signoff.signed_at,
            "resultsInterpreter": [{"display": signoff.signed_by}],
            "specimen": [{"reference": "#specimen"}],
            "result": [{"reference": f"#{o['id']}"} for o in observations],
            "contained": [sample, *observations],
            "conclusion": f"{conclusion} {DISCLAIMER}",
            "conclusionCode": [_code(interpretation.value, INTERPRETATION_TEXT[interpretation])],
        }
    )


def batch_bundle(session: Session, batch: Batch) -> Bundle:
    """The reports of every signed specimen with an image in the batch (its laboratory's
    specimens of those ids)."""
    batch_id = batch.id
    own = Scope(home=batch.laboratory_id, labs=frozenset({batch.laboratory_id}))
    entries = []
    for specimen_id in batch_specimen_ids(session, batch_id):
        specimen = load_specimen(session, specimen_id, own)
        if specimen.latest_signoff is None:
            continue
        report = diagnostic_report(specimen)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(URN_NAMESPACE, str(report.id))}",
                "resource": report.model_dump(mode="json", by_alias=True, exclude_none=True),
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": f"{IDENTIFIER_SYSTEM}:batch", "value": batch_id},
        "timestamp": datetime.now(UTC),
    }
    if entries:
        bundle["entry"] = entries
    return Bundle.model_validate(bundle)


def emit_specimen_signed(
    session: Session, specimen_id: str, scope: Scope | None = None
) -> list[str]:
    """The ``specimen.signed`` webhook deliveries of the sign-off just recorded, in the
    caller's transaction (call it right after ``db.specimens.sign`` with the same scope); the
    FHIR report rides along, so a receiver needs no second request. Only the specimen's
    laboratory's webhooks get it."""
    specimen = load_specimen(session, specimen_id, scope)
    report = diagnostic_report(specimen)
    signoff = specimen.latest_signoff
    assert signoff is not None  # diagnostic_report refused an unsigned specimen
    return emit(
        session,
        WebhookEvent.SPECIMEN_SIGNED,
        f"{specimen_id}/{signoff.seq}",
        {
            "specimen_id": specimen_id,
            "status": report.status,
            "signoff": signoff.as_dict(),
            "fhir_path": f"/api/v1/specimens/{specimen_id}/fhir",
            "report": report.model_dump(mode="json", by_alias=True, exclude_none=True),
        },
        laboratory_id=specimen.laboratory_id,
    )


def _fhir(body: str, filename: str) -> Response:
    response = Response(body, mimetype=FHIR_JSON)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.get("/specimens/<specimen_id>/fhir")
def specimen_report(specimen_id: str):
    with context.sessions()() as session:
        report = diagnostic_report(load_specimen(session, specimen_id, specimen_scope(specimen_id)))
    # The id is checked at intake (letters, digits, . _ -): safe in a file name.
    return _fhir(report.model_dump_json(), f"specimen-{specimen_id}.fhir.json")


@bp.get("/batches/<batch_id>/fhir")
def batch_reports(batch_id: str):
    with context.sessions()() as session:
        batch = batch_or_404(session, scope(), batch_id)
        bundle = batch_bundle(session, batch)
    return _fhir(bundle.model_dump_json(), f"batch-{batch.id}.fhir.json")
