"""laboratories (tenants): users, batches, reviews and audit rows belong to one; TRUNCATE
refused

Existing users, batches, reviews and audit rows move into the laboratory named "default";
existing admins become global admins, so nobody loses the access they had before. A
content's review history (0006) becomes one per laboratory, and so does a specimen id (0009):
its sign-offs are filed under the laboratory; a webhook hears only its laboratory's events.

Revision ID: 0008
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_LAB = "default"
DEFAULT_ID = f"(SELECT id FROM laboratory WHERE name = '{DEFAULT_LAB}')"
APPEND_ONLY = ("review", "audit_event", "specimen_signoff")


def _dialect() -> str:
    return op.get_bind().dialect.name


def _sqlite_triggers(table: str) -> tuple[str, ...]:
    """0002's append-only triggers of ``table`` on SQLite."""
    return tuple(
        f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} rows are append-only'); END"
        for event in ("UPDATE", "DELETE")
    )


@contextmanager
def _writable(table: str) -> Iterator[None]:
    """Lift the append-only triggers of ``table`` for this migration's own rewrite of old
    rows (the one update ever made to them, by the schema owner), and put them back."""
    if _dialect() == "postgresql":
        op.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{event}")
    yield
    if _dialect() == "postgresql":
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")
    else:
        for statement in _sqlite_triggers(table):
            op.execute(statement)


def _lab_column(table: str) -> None:
    """Add laboratory_id to ``table``, file every row in the default laboratory, require it."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("laboratory_id", sa.Integer(), nullable=True))
    op.execute(f"UPDATE {table} SET laboratory_id = {DEFAULT_ID}")
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.alter_column("laboratory_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            f"fk_{table}_laboratory_id_laboratory", "laboratory", ["laboratory_id"], ["id"]
        )


def _append_only_lab_column(table: str, fill: str) -> None:
    """A nullable laboratory_id on an append-only table, filled by ``fill``. Not rebuilt on
    SQLite, which would drop the table's triggers with the old table."""
    if _dialect() == "sqlite":
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN laboratory_id INTEGER REFERENCES laboratory (id)"
        )
    else:
        op.add_column(table, sa.Column("laboratory_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            f"fk_{table}_laboratory_id_laboratory", table, "laboratory", ["laboratory_id"], ["id"]
        )
    with _writable(table):
        op.execute(f"UPDATE {table} SET laboratory_id = {fill}")


def _drop_append_only_lab_column(table: str) -> None:
    if _dialect() == "sqlite":
        # SQLite cannot drop a column with a foreign key in place: the table is rebuilt, and
        # its append-only triggers, dropped with the old table, are created again.
        with op.batch_alter_table(table, schema=None, recreate="always") as batch_op:
            batch_op.drop_column("laboratory_id")
        for statement in _sqlite_triggers(table):
            op.execute(statement)
    else:
        op.drop_constraint(f"fk_{table}_laboratory_id_laboratory", table)
        op.drop_column(table, "laboratory_id")


SIGNOFF_UNIQUE = {3: "uq_signoff_lab_specimen_seq", 2: "uq_signoff_specimen_seq"}


def _swap_signoff_unique(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Replace specimen_signoff's unique key (a constraint since 0009). SQLite rebuilds the
    table for it, dropping its append-only triggers: they are created again."""
    with op.batch_alter_table(
        "specimen_signoff", schema=None, recreate="always" if _dialect() == "sqlite" else "auto"
    ) as batch_op:
        batch_op.drop_constraint(SIGNOFF_UNIQUE[len(old)], type_="unique")
        batch_op.create_unique_constraint(SIGNOFF_UNIQUE[len(new)], list(new))
    if _dialect() == "sqlite":
        for statement in _sqlite_triggers("specimen_signoff"):
            op.execute(statement)


def _renumber_per_content() -> None:
    """Back to one history per content across laboratories (0006): where two laboratories
    decided on the same bytes, number their rows again as one, in the order they were made
    (negative first, so that no intermediate state repeats a pair)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, sha256, seq FROM review ORDER BY sha256, created_at, id")
    ).all()
    changes = [
        {"id": row.id, "seq": new_seq}
        for _, group in groupby(rows, key=lambda r: r.sha256)
        for new_seq, row in enumerate(group, start=1)
        if row.seq != new_seq
    ]
    if changes:
        with _writable("review"):
            bind.execute(sa.text("UPDATE review SET seq = -(:seq) WHERE id = :id"), changes)
            bind.execute(sa.text("UPDATE review SET seq = -seq WHERE seq < 0"))


def upgrade() -> None:
    op.create_table(
        "laboratory",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.execute(
        f"INSERT INTO laboratory (name, created_at) VALUES ('{DEFAULT_LAB}', CURRENT_TIMESTAMP)"
    )
    op.create_table(
        "laboratory_grant",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("laboratory_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["laboratory_id"], ["laboratory.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "laboratory_id"),
    )

    with op.batch_alter_table("user_account", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("global_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Before laboratories every admin managed everything: they keep that scope.
    op.execute("UPDATE user_account SET global_admin = true WHERE role = 'admin'")
    _lab_column("user_account")
    _lab_column("batch")
    with op.batch_alter_table("batch", schema=None) as batch_op:
        batch_op.create_index(
            "ix_batch_laboratory_created", ["laboratory_id", "created_at"], unique=False
        )

    # audit_event stays nullable: system-wide events have no laboratory.
    _append_only_lab_column("audit_event", DEFAULT_ID)
    op.create_index("ix_audit_event_laboratory", "audit_event", ["laboratory_id", "id"])
    # A review belongs to its image's laboratory; a content's history is one per laboratory.
    _append_only_lab_column(
        "review",
        "(SELECT batch.laboratory_id FROM image JOIN batch ON batch.id = image.batch_id "
        "WHERE image.id = review.image_id)",
    )
    op.drop_index("uq_review_sha256_seq", table_name="review")
    op.create_index(
        "uq_review_lab_sha256_seq", "review", ["laboratory_id", "sha256", "seq"], unique=True
    )

    # Sign-offs: a specimen id is unique within a laboratory only.
    _append_only_lab_column(
        "specimen_signoff",
        "coalesce((SELECT min(batch.laboratory_id) FROM image JOIN batch "
        "ON batch.id = image.batch_id WHERE image.specimen_id = specimen_signoff.specimen_id), "
        f"{DEFAULT_ID})",
    )
    _swap_signoff_unique(("specimen_id", "seq"), ("laboratory_id", "specimen_id", "seq"))
    _lab_column("webhook")

    # 0002's row triggers refuse UPDATE and DELETE; TRUNCATE fires no row trigger, so the
    # append-only tables also get a statement trigger (SQLite has no TRUNCATE).
    if _dialect() == "postgresql":
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION leukoscreen_append_only()"
            )


def downgrade() -> None:
    if _dialect() == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    with op.batch_alter_table("webhook", schema=None) as batch_op:
        batch_op.drop_constraint("fk_webhook_laboratory_id_laboratory", type_="foreignkey")
        batch_op.drop_column("laboratory_id")
    _swap_signoff_unique(("laboratory_id", "specimen_id", "seq"), ("specimen_id", "seq"))
    _drop_append_only_lab_column("specimen_signoff")
    op.drop_index("uq_review_lab_sha256_seq", table_name="review")
    _renumber_per_content()
    op.create_index("uq_review_sha256_seq", "review", ["sha256", "seq"], unique=True)
    _drop_append_only_lab_column("review")
    op.drop_index("ix_audit_event_laboratory", table_name="audit_event")
    _drop_append_only_lab_column("audit_event")

    with op.batch_alter_table("batch", schema=None) as batch_op:
        batch_op.drop_index("ix_batch_laboratory_created")
        batch_op.drop_constraint("fk_batch_laboratory_id_laboratory", type_="foreignkey")
        batch_op.drop_column("laboratory_id")
    with op.batch_alter_table("user_account", schema=None) as batch_op:
        batch_op.drop_constraint("fk_user_account_laboratory_id_laboratory", type_="foreignkey")
        batch_op.drop_column("laboratory_id")
        batch_op.drop_column("global_admin")
    op.drop_table("laboratory_grant")
    op.drop_table("laboratory")
