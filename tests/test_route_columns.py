"""Migration 0004 and the route columns in every export (CSV and JSON)."""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from db import migrate
from tests.conftest import token_client
from tests.reviewdata import seed_scored


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, settings) -> str:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return settings.database_url


def test_migration_0004_gives_old_results_the_route_of_their_flag(empty_database):
    migrate.upgrade(empty_database, "0003")
    engine = create_engine(empty_database, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batch (id, name, submitted_by, created_at, state) "
                "VALUES ('b', 'old', 'lab', CURRENT_TIMESTAMP, 'complete')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_version (id, sha256, name, threshold, metrics, "
                "created_at) VALUES (1, 'v', 'old', 0.5, '{}', CURRENT_TIMESTAMP)"
            )
        )
        for i, (p, flagged) in enumerate(((0.9, True), (0.1, False)), start=1):
            conn.execute(
                text(
                    "INSERT INTO image (id, batch_id, sha256, original_name, size_bytes, state, "
                    "attempts, created_at, updated_at) VALUES (:i, 'b', :s, :n, 1, 'scored', 1, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"i": i, "s": f"s{i}", "n": f"{i}.jpg"},
            )
            conn.execute(
                text("INSERT INTO result (image_id, batch_id, model_version_id, p_leukemia, "
                     "flagged, threshold, scored_at) VALUES (:i, 'b', 1, :p, :f, 0.5, "
                     "CURRENT_TIMESTAMP)"),
                {"i": i, "p": p, "f": flagged},
            )  # fmt: skip
        # a decision on the flagged one: the upgrade must not trip its foreign key
        conn.execute(
            text(
                "INSERT INTO user_account (id, name, password_hash, role, active, created_at) "
                "VALUES (1, 'dr', 'x', 'reviewer', true, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO review (image_id, result_id, seq, decision, label, comment, "
                "reviewer_id, created_at) VALUES (1, 1, 1, 'confirmed', 'leukemia', '', 1, "
                "CURRENT_TIMESTAMP)"
            )
        )
    migrate.upgrade(empty_database)
    with engine.begin() as conn:  # a row written without a route goes to a person
        conn.execute(
            text(
                "INSERT INTO image (id, batch_id, sha256, original_name, size_bytes, state, "
                "attempts, created_at, updated_at) VALUES (3, 'b', 's3', '3.jpg', 1, 'scored', "
                "1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO result (image_id, batch_id, model_version_id, p_leukemia, flagged, "
                "threshold, scored_at) VALUES (3, 'b', 1, 0.1, false, 0.5, CURRENT_TIMESTAMP)"
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT image_id, route, route_reason, domain_distance FROM result ORDER BY 1")
        ).all()
        drift = conn.execute(text("SELECT drift FROM batch")).scalar()
    assert [tuple(r) for r in rows] == [
        (1, "flagged", None, None),
        (2, "cleared", None, None),
        (3, "manual_review", None, None),
    ]
    assert drift is None
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM result WHERE image_id = 3"))
    migrate.downgrade(empty_database, "0003")  # and back: the columns go again
    with engine.connect() as conn:
        columns = conn.execute(text("SELECT * FROM result")).keys()
    assert "route" not in columns
    engine.dispose()


def test_exports_carry_route_and_route_reason_for_every_row(db_settings):
    from api import create_app

    app = create_app(replace(db_settings))
    batch_id, _ = seed_scored(db_settings.database_url, [0.9, 0.2])
    client = token_client(app, db_settings.database_url, "lab", "uploader")
    exported = client.get(f"/api/v1/batches/{batch_id}/results?format=csv")
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [(r["route"], r["route_reason"]) for r in rows] == [("flagged", ""), ("cleared", "")]
    as_json = client.get(f"/api/v1/batches/{batch_id}/results?format=json").get_json()
    assert [(r["route"], r["route_reason"]) for r in as_json["results"]] == [
        ("flagged", None),
        ("cleared", None),
    ]
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert (batch["flagged"], batch["cleared"], batch["manual_review"]) == (1, 1, 0)
