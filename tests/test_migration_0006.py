"""Migration 0006 on a database with rows: copies reviewed apart become one history per
content, the append-only trigger survives, and the downgrade takes the columns away again."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from db import migrate


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, settings) -> str:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return settings.database_url


def _seed_0005(conn) -> None:  # type: ignore[no-untyped-def]
    conn.execute(
        text(
            "INSERT INTO batch (id, name, submitted_by, created_at, state) VALUES "
            "('b1', 'monday', 'lab', CURRENT_TIMESTAMP, 'complete'), "
            "('b2', 'tuesday', 'lab', CURRENT_TIMESTAMP, 'complete')"
        )
    )
    conn.execute(
        text(
            "INSERT INTO model_version (id, sha256, name, threshold, metrics, created_at) "
            "VALUES (1, 'v', 'm', 0.5, '{}', CURRENT_TIMESTAMP)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO user_account (id, name, password_hash, role, active, created_at) "
            "VALUES (1, 'dr', 'x', 'reviewer', true, CURRENT_TIMESTAMP)"
        )
    )
    # Images 1 and 2 are the same bytes in two batches; image 3 is another content.
    for image_id, batch, sha in ((1, "b1", "same"), (2, "b2", "same"), (3, "b1", "other")):
        conn.execute(
            text(
                "INSERT INTO image (id, batch_id, sha256, original_name, size_bytes, state, "
                "attempts, created_at, updated_at) VALUES (:i, :b, :s, :n, 1, 'scored', 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"i": image_id, "b": batch, "s": sha, "n": f"{image_id}.jpg"},
        )
        conn.execute(
            text(
                "INSERT INTO result (id, image_id, batch_id, model_version_id, p_leukemia, "
                "flagged, threshold, route, scored_at) VALUES (:i, :i, :b, 1, 0.9, true, 0.5, "
                "'flagged', CURRENT_TIMESTAMP)"
            ),
            {"i": image_id, "b": batch},
        )
    # Before 0006 each copy had its own history: both got a seq 1, in this order.
    for review_id, image_id, seq, decision, at in (
        (1, 1, 1, "confirmed", "2026-01-01 10:00:00"),
        (2, 3, 1, "confirmed", "2026-01-01 10:30:00"),
        (3, 2, 1, "overturned", "2026-01-02 09:00:00"),
        (4, 1, 2, "second_opinion", "2026-01-03 09:00:00"),
    ):
        conn.execute(
            text(
                "INSERT INTO review (id, image_id, result_id, seq, decision, comment, "
                "reviewer_id, created_at) VALUES (:r, :i, :i, :q, :d, '', 1, :at)"
            ),
            {"r": review_id, "i": image_id, "q": seq, "d": decision, "at": at},
        )


def test_migration_0006_merges_copies_histories_and_downgrades(empty_database):
    migrate.upgrade(empty_database, "0005")
    engine = create_engine(empty_database, poolclass=NullPool)
    with engine.begin() as conn:
        _seed_0005(conn)
    migrate.upgrade(empty_database, "0006")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, image_id, sha256, seq FROM review ORDER BY id")).all()
        image_columns = conn.execute(text("SELECT * FROM image")).keys()
    # One history for the content "same", in the order the decisions were made.
    assert [tuple(r) for r in rows] == [
        (1, 1, "same", 1),
        (2, 3, "other", 1),
        (3, 2, "same", 2),
        (4, 1, "same", 3),
    ]
    assert {"duplicate_of_id", "reason_code"} <= set(image_columns)
    with engine.begin() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE review SET decision = 'confirmed'"))
    with engine.begin() as conn, pytest.raises(Exception, match="uq_review_sha256_seq|UNIQUE"):
        conn.execute(
            text(
                "INSERT INTO review (id, image_id, sha256, result_id, seq, decision, comment, "
                "reviewer_id, created_at) VALUES (5, 2, 'same', 2, 3, 'confirmed', '', 1, "
                "CURRENT_TIMESTAMP)"
            )
        )

    migrate.downgrade(empty_database, "0005")
    with engine.connect() as conn:
        review_columns = conn.execute(text("SELECT * FROM review")).keys()
        image_columns = conn.execute(text("SELECT * FROM image")).keys()
        assert conn.execute(text("SELECT count(*) FROM review")).scalar() == 4
    assert "sha256" not in review_columns
    assert "duplicate_of_id" not in image_columns and "reason_code" not in image_columns
    with engine.begin() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("DELETE FROM review"))
    engine.dispose()
