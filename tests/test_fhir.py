"""FHIR R4 reports of signed specimens, checked by parsing them back with fhir.resources."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.specimen import Specimen

from api import create_app
from tests.conftest import token_client
from tests.lisdata import scored_specimen, sign_specimen


@pytest.fixture
def lab(db_settings):  # type: ignore[no-untyped-def]
    app = create_app(db_settings)
    return app, token_client(app, db_settings.database_url)


def _report(client, specimen_id: str) -> DiagnosticReport:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/specimens/{specimen_id}/fhir")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/fhir+json"
    return DiagnosticReport.model_validate_json(resp.get_data(as_text=True))


def test_a_signed_specimen_is_a_valid_diagnostic_report_with_an_observation_per_image(
    lab, db_settings
):
    app, client = lab
    _, image_ids = scored_specimen(db_settings.database_url, "S-100", [0.93, 0.12, 0.4])
    sign_specimen(db_settings.database_url, "S-100", "leukemia_suspected", "blasts seen")

    report = _report(client, "S-100")

    assert report.status == "final"
    assert report.conclusionCode[0].coding[0].code == "leukemia_suspected"
    assert report.conclusion.startswith("Leukemia suspected. blasts seen")
    assert report.resultsInterpreter[0].display == "dr-path"
    assert report.issued is not None and report.issued.tzinfo is not None
    specimen = next(r for r in report.contained if isinstance(r, Specimen))
    assert specimen.accessionIdentifier.value == "S-100"
    observations = {
        int(o.identifier[0].value): o for o in report.contained if isinstance(o, Observation)
    }
    assert sorted(observations) == sorted(image_ids)
    assert [r.reference for r in report.result] == [f"#image-{i}" for i in image_ids]
    flagged = observations[image_ids[0]]
    assert float(flagged.valueQuantity.value) == pytest.approx(0.93)
    assert flagged.interpretation[0].coding[0].code == "A"
    parts = {c.code.coding[0].code: c for c in flagged.component}
    assert parts["route"].valueCodeableConcept.coding[0].code == "flagged"
    assert float(parts["threshold"].valueQuantity.value) == pytest.approx(0.5)
    assert parts["model-version"].valueString == "lenet_lld-test"
    assert parts["review-decision"].valueCodeableConcept.coding[0].code == "confirmed"
    assert observations[image_ids[1]].interpretation[0].coding[0].code == "N"


def test_an_amendment_is_served_as_an_amended_report(lab, db_settings):
    app, client = lab
    scored_specimen(db_settings.database_url, "S-101", [0.2])
    first = sign_specimen(db_settings.database_url, "S-101", "no_leukemia_detected")
    sign_specimen(
        db_settings.database_url, "S-101", "inadequate_sample", "too few cells", amends_id=first
    )

    report = _report(client, "S-101")

    assert report.status == "amended"
    assert report.conclusionCode[0].coding[0].code == "inadequate_sample"
    assert f"signoff-{first}" in report.conclusion


def test_an_unsigned_specimen_has_no_report_and_an_unknown_one_is_not_found(lab, db_settings):
    app, client = lab
    scored_specimen(db_settings.database_url, "S-102", [0.2])

    unsigned = client.get("/api/v1/specimens/S-102/fhir")
    unknown = client.get("/api/v1/specimens/S-999/fhir")

    assert unsigned.status_code == 409 and "not signed" in unsigned.json["error"]
    assert unknown.status_code == 404


def test_a_batch_exports_a_collection_bundle_of_its_signed_specimens_only(lab, db_settings):
    app, client = lab
    batch_id, _ = scored_specimen(db_settings.database_url, "S-103", [0.7, 0.1])
    sign_specimen(db_settings.database_url, "S-103")
    unsigned_batch, _ = scored_specimen(db_settings.database_url, "S-104", [0.1])

    resp = client.get(f"/api/v1/batches/{batch_id}/fhir")
    empty = client.get(f"/api/v1/batches/{unsigned_batch}/fhir")

    assert resp.status_code == 200 and resp.mimetype == "application/fhir+json"
    bundle = Bundle.model_validate_json(resp.get_data(as_text=True))
    assert bundle.type == "collection"
    assert [type(e.resource) for e in bundle.entry] == [DiagnosticReport]
    assert bundle.entry[0].fullUrl.startswith("urn:uuid:")
    assert Bundle.model_validate_json(empty.get_data(as_text=True)).entry is None
    assert client.get("/api/v1/batches/no-such-batch/fhir").status_code == 404


def test_an_image_that_could_not_be_scored_is_a_cancelled_observation(lab, db_settings):
    from db.models import Batch, Image
    from db.session import engine_for, session_factory

    app, client = lab
    scored_specimen(db_settings.database_url, "S-105", [0.2])
    with session_factory(engine_for(db_settings.database_url)).begin() as s:
        batch = Batch(name="unreadable", submitted_by="tests")
        s.add(
            Image(
                batch=batch,
                sha256="f" * 64,
                original_name="broken.jpg",
                storage_key="f" * 64,
                size_bytes=1,
                state="failed",
                error="cannot decode",
                specimen_id="S-105",
            )
        )
    sign_specimen(db_settings.database_url, "S-105", "inadequate_sample")

    report = _report(client, "S-105")

    observations = [o for o in report.contained if isinstance(o, Observation)]
    cancelled = [o for o in observations if o.status == "cancelled"]
    assert len(observations) == 2 and len(cancelled) == 1
    assert cancelled[0].dataAbsentReason.coding[0].code == "error"
    assert cancelled[0].valueQuantity is None
