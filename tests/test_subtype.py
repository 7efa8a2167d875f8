"""The B-ALL subtype of model generation 2 (issue 16, item 2): in every JSON representation of
a result, in the CSV export's columns, on the specimen page of images that go to a person, in
the hooks of the review and single-image pages, and in a signed specimen's FHIR report.

Results are written straight into the database with the subtype a worker stores; the last test
scores with an untrained ``lenet_lld_v2`` to show the whole way from network to export. The
review and single-image pages' scripts are driven in a browser in ``test_review_pages``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Sequence
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import update

from db.models import Image, ImageState, Result
from db.progress import RESULT_COLUMNS
from db.session import engine_for, session_factory
from db.subtypes import page_words
from model.card import SUBTYPES
from tests.conftest import browser_login, token_client
from tests.lisdata import scored_specimen, sign_specimen
from tests.reviewdata import seed_scored
from tests.test_routes_shown import route_manual

PRE_B = {"early_pre_b": 0.05, "pre_b": 0.91, "pro_b": 0.04}
PRO_B = {"early_pre_b": 0.2, "pre_b": 0.1, "pro_b": 0.7}
EARLY = {"early_pre_b": 0.6, "pre_b": 0.3, "pro_b": 0.1}
NONE: dict[str, Any] = {"subtype": None, "subtype_probs": None}


def with_subtypes(database_url: str, estimates: dict[int, dict[str, float]]) -> None:
    """Give these images' results the subtype a generation-2 worker stores: the most likely
    subtype and every subtype's probability given leukemia."""
    with session_factory(engine_for(database_url)).begin() as session:
        for image_id, probs in estimates.items():
            session.execute(
                update(Result)
                .where(Result.image_id == image_id)
                .values(subtype=max(probs, key=lambda s: probs[s]), subtype_probs=probs)
            )


def _seed(database_url: str) -> tuple[str, list[int]]:
    """Flagged Pre-B 0.9, manual review Pro-B 0.8, cleared early pre-B 0.2, and a flagged 0.7
    from a network without the subtype head; all four fields of specimen SP-16."""
    batch, ids = seed_scored(database_url, [0.9, 0.8, 0.2, 0.7])
    route_manual(database_url, [ids[1]], "underexposed")
    with_subtypes(database_url, {ids[0]: PRE_B, ids[1]: PRO_B, ids[2]: EARLY})
    with session_factory(engine_for(database_url)).begin() as session:
        session.execute(update(Image).where(Image.id.in_(ids)).values(specimen_id="SP-16"))
    return batch, ids


def _expected(ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    return {
        ids[0]: {"subtype": "pre_b", "subtype_probs": PRE_B},
        ids[1]: {"subtype": "pro_b", "subtype_probs": PRO_B},
        ids[2]: {"subtype": "early_pre_b", "subtype_probs": EARLY},
        ids[3]: NONE,
    }


def _subtypes(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {
        r["image_id"]: {"subtype": r["subtype"], "subtype_probs": r["subtype_probs"]} for r in rows
    }


def _valid(spec: dict[str, Any], path: str, body: Any) -> None:
    """``body`` is what the OpenAPI description says ``path``'s GET answers."""
    op = spec["paths"][path]["get"]["responses"]["200"]
    schema = op["content"]["application/json"]["schema"]
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(body)]
    assert errors == [], f"{path}: {errors[:3]}"


def test_every_json_representation_of_a_result_carries_its_subtype_or_null(app, db_settings):
    batch, ids = _seed(db_settings.database_url)
    expected = _expected(ids)
    reviewer = token_client(app, db_settings.database_url, "rita", "reviewer")
    spec = reviewer.get("/api/v1/openapi.json").json

    results = reviewer.get(f"/api/v1/batches/{batch}/results").json
    assert _subtypes(results["results"]) == expected
    _valid(spec, "/api/v1/batches/{batch_id}/results", results)
    export = json.loads(reviewer.get(f"/api/v1/batches/{batch}/results?format=json").data)
    assert _subtypes(export["results"]) == expected

    listed = reviewer.get(f"/api/v1/batches/{batch}/images").json
    assert _subtypes(listed["items"]) == expected
    _valid(spec, "/api/v1/batches/{batch_id}/images", listed)

    # The queue holds what goes to a person; the QC sample the cleared image, subtype and all.
    queue = reviewer.get(f"/api/v1/review/queue?batch={batch}&state=all").json
    assert _subtypes(queue["items"]) == {i: expected[i] for i in (ids[0], ids[1], ids[3])}
    _valid(spec, "/api/v1/review/queue", queue)
    for image_id in ids[:2] + ids[3:]:
        item = reviewer.get(f"/api/v1/review/items/{image_id}").json
        assert _subtypes([item]) == {image_id: expected[image_id]}
    _valid(spec, "/api/v1/review/items/{image_id}", item)
    sample = reviewer.get(f"/api/v1/batches/{batch}/sample").json
    assert _subtypes(sample["items"]) == {ids[2]: expected[ids[2]]}

    specimen = reviewer.get("/api/v1/specimens/SP-16").json
    assert _subtypes(specimen["images"]) == expected
    _valid(spec, "/api/v1/specimens/{specimen_id}", specimen)


def test_the_csv_export_has_a_column_per_subtype_and_a_duplicate_gets_its_twins(app, db_settings):
    batch, ids = _seed(db_settings.database_url)
    with session_factory(engine_for(db_settings.database_url)).begin() as session:
        twin = session.get(Image, ids[0])
        assert twin is not None
        session.add(
            Image(
                batch_id=batch,
                sha256=twin.sha256,
                original_name="copy of cell_000.jpg",
                size_bytes=1,
                state=ImageState.DUPLICATE.value,
                duplicate_of_id=twin.id,
            )
        )
    client = token_client(app, db_settings.database_url, "lab", "uploader")

    exported = client.get(f"/api/v1/batches/{batch}/results?format=csv")

    assert exported.status_code == 200
    text = exported.get_data(as_text=True)
    header = next(csv.reader(io.StringIO(text)))
    assert header == list(RESULT_COLUMNS)
    # The model's outputs side by side: the route, then the subtype and its probabilities.
    start = header.index("route_reason") + 1
    assert header[start : start + 4] == ["subtype", "p_early_pre_b", "p_pre_b", "p_pro_b"]
    assert "subtype_probs" not in header
    rows = {r["file_name"]: r for r in csv.DictReader(io.StringIO(text))}
    columns = ("subtype", "p_early_pre_b", "p_pre_b", "p_pro_b")
    shown = {name: tuple(r[c] for c in columns) for name, r in rows.items()}
    assert shown == {
        "cell_000.jpg": ("pre_b", "0.050000", "0.910000", "0.040000"),
        "cell_001.jpg": ("pro_b", "0.200000", "0.100000", "0.700000"),
        "cell_002.jpg": ("early_pre_b", "0.600000", "0.300000", "0.100000"),
        "cell_003.jpg": ("", "", "", ""),  # a network without the subtype head
        "copy of cell_000.jpg": ("pre_b", "0.050000", "0.910000", "0.040000"),
    }
    assert rows["copy of cell_000.jpg"]["state"] == "duplicate"


def _thumbs(page: str) -> dict[str, str]:
    """The text of the specimen page's image tiles (as a reader sees it) by file name."""
    tiles = re.findall(r'<li class="thumb[^"]*">(.*?)</li>', page, re.S)
    texts = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", t)).split()) for t in tiles]
    return {t.split()[0]: t for t in texts}


def test_the_specimen_page_shows_the_subtype_of_images_that_go_to_a_person_only(app, db_settings):
    _, ids = _seed(db_settings.database_url)
    reviewer = browser_login(app, db_settings.database_url, "rita", "reviewer")

    page = reviewer.get("/specimens/SP-16").get_data(as_text=True)

    tiles = _thumbs(page)
    flagged = tiles["cell_000.jpg"]
    assert "Most likely subtype, if leukemic: Pre-B 0.910" in flagged
    assert "Early pre-B 0.050 · Pre-B 0.910 · Pro-B 0.040" in flagged
    assert "A model estimate, conditional on leukemia; not a diagnosis." in flagged
    assert "cannot judge" not in flagged
    manual = tiles["cell_001.jpg"]
    assert "Most likely subtype, if leukemic: Pro-B 0.700" in manual
    assert "the model cannot judge this image, so do not rely on it." in manual
    # A cleared image keeps its subtype in the data, not on the page; an old network has none.
    assert "subtype" not in tiles["cell_002.jpg"] and "pre-B" not in tiles["cell_002.jpg"]
    assert "subtype" not in tiles["cell_003.jpg"] and "pre-B" not in tiles["cell_003.jpg"]
    assert "p(leukemia) 0.200" in tiles["cell_002.jpg"]


def test_the_review_and_single_pages_give_their_scripts_the_subtype_words(app, db_settings):
    batch, _ = _seed(db_settings.database_url)
    reviewer = browser_login(app, db_settings.database_url, "rita", "reviewer")
    words = page_words()
    assert [key for key, _ in words["labels"]] == list(SUBTYPES)
    assert [name for _, name in words["labels"]] == ["Early pre-B", "Pre-B", "Pro-B"]
    for path in (f"/review?batch={batch}", f"/review/sample/{batch}", "/single"):
        page = reviewer.get(path).get_data(as_text=True)
        found = re.search(r"data-subtypes='([^']*)'", page)
        assert found, path
        assert json.loads(html.unescape(found.group(1))) == words
        # Hidden until the script has an estimate to show (none for a cleared image).
        prefix = "single" if path == "/single" else "item"
        assert f'<dd id="{prefix}-subtype" class="subtype" hidden></dd>' in page
        assert f'<dt id="{prefix}-subtype-label" hidden>' in page


def test_a_signed_report_has_the_subtype_estimate_of_each_image_that_went_to_a_person(
    app, db_settings
):
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    batch, ids = scored_specimen(db_settings.database_url, "S-200", [0.93, 0.12, 0.8, 0.7])
    route_manual(db_settings.database_url, [ids[2]], "underexposed")
    with_subtypes(db_settings.database_url, {ids[0]: PRE_B, ids[1]: EARLY, ids[2]: PRO_B})
    sign_specimen(db_settings.database_url, "S-200", "leukemia_suspected")
    client = token_client(app, db_settings.database_url)

    answer = client.get("/api/v1/specimens/S-200/fhir")

    assert answer.status_code == 200, answer.get_data(as_text=True)
    report = DiagnosticReport.model_validate_json(answer.get_data(as_text=True))
    contained = {o.id: o for o in report.contained if isinstance(o, Observation)}
    subtype = contained[f"image-subtype-{ids[0]}"]
    assert subtype.code.text == "Model estimate of B-ALL subtype (given leukemia)"
    assert subtype.status == "final"
    concept = subtype.valueCodeableConcept
    assert (concept.coding[0].code, concept.text) == ("pre_b", "Pre-B")
    assert [r.reference for r in subtype.derivedFrom] == [f"#image-{ids[0]}"]
    probs = {c.code.coding[0].code: float(c.valueQuantity.value) for c in subtype.component}
    assert probs == {"p_early_pre_b": 0.05, "p_pre_b": 0.91, "p_pro_b": 0.04}
    assert {c.valueQuantity.unit for c in subtype.component} == {"probability"}
    assert "a model estimate, conditional on leukemia; not a diagnosis" in subtype.note[0].text
    manual = contained[f"image-subtype-{ids[2]}"]
    assert manual.valueCodeableConcept.text == "Pro-B"
    assert "cannot judge this image" in manual.note[0].text
    # None for the cleared image, none from the network without the subtype head.
    assert f"image-subtype-{ids[1]}" not in contained
    assert f"image-subtype-{ids[3]}" not in contained
    assert [r.reference for r in report.result] == [
        f"#image-{ids[0]}",
        f"#image-subtype-{ids[0]}",
        f"#image-{ids[1]}",
        f"#image-{ids[2]}",
        f"#image-subtype-{ids[2]}",
        f"#image-{ids[3]}",
    ]
    # The image's own observation is as before: p_leukemia as its value.
    assert float(contained[f"image-{ids[0]}"].valueQuantity.value) == pytest.approx(0.93)
    bundle = client.get(f"/api/v1/batches/{batch}/fhir")
    assert bundle.status_code == 200
    parsed = Bundle.model_validate_json(bundle.get_data(as_text=True))
    assert parsed.entry is not None and len(parsed.entry) == 1


@pytest.fixture(scope="module")
def v2_model(v2_model_path):  # type: ignore[no-untyped-def]
    from model.inference import load_model

    return load_model(v2_model_path, batch_size=4)


def test_a_generation_2_network_fills_the_subtype_of_every_export(
    app, db_settings, v2_model, make_jpeg
):
    from tests.test_scoring import _seed as seed_queued
    from worker.scoring import register_model_version, score_chunk

    ids, store = seed_queued(db_settings, [make_jpeg(i) for i in range(3)])
    sessions = session_factory(engine_for(db_settings.database_url))
    model = v2_model
    version = register_model_version(sessions, model)
    assert score_chunk(sessions, store, model, version, ids, max_attempts=3).scored == 3
    client = token_client(app, db_settings.database_url, "lab", "uploader")
    with sessions() as session:
        batch = session.get(Image, ids[0]).batch_id  # type: ignore[union-attr]

    rows = client.get(f"/api/v1/batches/{batch}/results").json["results"]
    exported = client.get(f"/api/v1/batches/{batch}/results?format=csv").get_data(as_text=True)

    assert len(rows) == 3
    for row in rows:
        probs = row["subtype_probs"]
        assert set(probs) == set(SUBTYPES) and sum(probs.values()) == pytest.approx(1.0)
        assert row["subtype"] == max(probs, key=probs.get)
    for line in csv.DictReader(io.StringIO(exported)):
        assert line["subtype"] in SUBTYPES
        total = sum(float(line[f"p_{s}"]) for s in SUBTYPES)
        assert total == pytest.approx(1.0, abs=1e-5)
