"""The review queue stays an index walk on PostgreSQL at scale: no sort, no full scan."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from db import migrate
from db.reviews import QueueFilter, queue_statement
from db.tenancy import DEFAULT_LAB_ID, Scope
from tests.conftest import PG_URL

pytestmark = pytest.mark.postgres
# A reviewer of one laboratory: the queue is filtered by it, as every real request is.
LAB = Scope(home=DEFAULT_LAB_ID, labs=frozenset({DEFAULT_LAB_ID}))

N_IMAGES = 100_000


@pytest.fixture(scope="module")
def big_database():  # type: ignore[no-untyped-def]
    """One schema with 100k scored images for the whole module (filling it takes seconds)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO user_account (name, password_hash, role, active, laboratory_id, "
                "created_at) VALUES ('r', 'x', 'reviewer', true, 1, now())"
            )
        )
        c.execute(
            text(
                "INSERT INTO model_version (sha256, name, threshold, metrics, created_at) "
                "VALUES ('a', 'm', 0.5, '{}', now())"
            )
        )
        c.execute(
            text(
                "INSERT INTO batch (id, laboratory_id, name, submitted_by, created_at, state) "
                "SELECT 'b' || g, 1, 'b', 't', now(), 'complete' FROM generate_series(0, 99) g"
            )
        )
        c.execute(
            text(
                "INSERT INTO image (batch_id, sha256, original_name, size_bytes, state, attempts,"
                " created_at, updated_at) SELECT 'b' || (g % 100), md5(g::text) || md5(g::text),"
                f" 'f' || g, 1, 'scored', 1, now(), now() FROM generate_series(1, {N_IMAGES}) g"
            )
        )
        c.execute(
            text(
                # About 2% manual review (the gate's aim), the rest flagged or cleared.
                "INSERT INTO result (image_id, batch_id, model_version_id, p_leukemia, flagged,"
                " threshold, route, route_reason, scored_at) SELECT id, batch_id, 1, r,"
                " m OR r >= 0.5, 0.5, CASE WHEN m THEN 'manual_review' WHEN r >= 0.5"
                " THEN 'flagged' ELSE 'cleared' END, CASE WHEN m THEN 'out_of_focus' END, now()"
                " FROM (SELECT id, batch_id, random() r, random() < 0.02 m FROM image) s"
            )
        )
        c.execute(
            text(
                "INSERT INTO review (image_id, laboratory_id, sha256, result_id, seq, decision,"
                " comment, reviewer_id, created_at) SELECT r.image_id, 1, i.sha256, r.id, 1,"
                " 'confirmed', '', 1, now() FROM result r JOIN image i ON i.id = r.image_id"
                " WHERE r.flagged AND r.id % 3 = 0"
            )
        )
        c.execute(
            text(
                # Some decisions taken back (an undo is a withdrawn row), and false negatives
                # found in QC (cleared images overturned to leukemia).
                "INSERT INTO review (image_id, sha256, result_id, seq, decision,"
                " previous_decision, comment, reviewer_id, created_at) SELECT r.image_id,"
                " i.sha256, r.id, 2, 'withdrawn', 'confirmed', '', 1, now() FROM result r"
                " JOIN image i ON i.id = r.image_id WHERE r.flagged AND r.id % 30 = 0"
            )
        )
        c.execute(
            text(
                "INSERT INTO review (image_id, sha256, result_id, seq, decision, label,"
                " comment, reviewer_id, created_at) SELECT r.image_id, i.sha256, r.id, 1,"
                " 'overturned', 'leukemia', '', 1, now() FROM result r"
                " JOIN image i ON i.id = r.image_id WHERE NOT r.flagged AND r.id % 500 = 0"
            )
        )
        c.execute(text("ANALYZE"))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.mark.parametrize(
    ("name", "queue_filter", "after", "index"),
    [
        ("first page", QueueFilter(), None, "ix_result_queue"),
        ("deep page", QueueFilter(), (0.7, 10**9), "ix_result_queue"),
        ("decided ones", QueueFilter(state="confirmed"), None, "ix_result_queue"),
        ("least suspicious", QueueFilter(state=None, ascending=True), None, "ix_result_queue"),
        ("one batch", QueueFilter(batch_id="b7"), None, "ix_result_batch_queue"),
        ("flagged only", QueueFilter(route="flagged"), None, "ix_result_queue"),
        ("manual review only", QueueFilter(route="manual_review"), None, "ix_result_queue"),
        (
            "explored threshold",
            QueueFilter(batch_id="b7", threshold=0.3),
            None,
            "ix_result_batch_queue",
        ),
        (
            "explored threshold, flagged only",
            QueueFilter(batch_id="b7", threshold=0.3, route="flagged"),
            None,
            "ix_result_batch_queue",
        ),
    ],
)
def test_a_queue_page_is_an_index_walk_without_sorting(
    big_database, name, queue_filter, after, index
):
    sql = queue_statement(queue_filter, after, 50, LAB).compile(
        big_database, compile_kwargs={"literal_binds": True}
    )
    with big_database.connect() as c:
        plan = "\n".join(r[0] for r in c.execute(text(f"EXPLAIN {sql}")))
    assert index in plan, plan
    assert "Sort" not in plan, plan
    assert "Seq Scan on result" not in plan and "Seq Scan on review" not in plan, plan


def test_one_batchs_manual_review_images_are_read_by_route_not_by_scanning(big_database):
    """A batch's few manual-review images come straight from ix_result_batch_route; sorting
    those few (not the batch, not the table) is cheaper than walking the batch by score."""
    sql = queue_statement(QueueFilter(batch_id="b7", route="manual_review"), None, 50, LAB).compile(
        big_database, compile_kwargs={"literal_binds": True}
    )
    with big_database.connect() as c:
        plan = "\n".join(r[0] for r in c.execute(text(f"EXPLAIN {sql}")))
    assert "ix_result_batch_route" in plan or "ix_result_batch_queue" in plan, plan
    assert "Seq Scan on result" not in plan and "Seq Scan on review" not in plan, plan


def test_false_negatives_are_read_from_the_few_reviews_that_overturned_a_cleared_image(
    big_database,
):
    """Cleared images are half the table and off the queue's index: the filter starts from
    the reviews that say leukemia for an overturned image, and sorts those few."""
    for batch_id in (None, "b7"):
        sql = queue_statement(
            QueueFilter(batch_id=batch_id, state="false_negative"), None, 50, LAB
        ).compile(big_database, compile_kwargs={"literal_binds": True})
        with big_database.connect() as c:
            plan = "\n".join(r[0] for r in c.execute(text(f"EXPLAIN {sql}")))
        assert "Seq Scan on result" not in plan, plan
        assert "ix_result_queue" not in plan, plan  # not a walk through every cleared image
