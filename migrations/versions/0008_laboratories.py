"""laboratories (tenants): users, batches and audit rows belong to one; TRUNCATE refused

Existing users, batches and audit rows move into the laboratory named "default"; existing
admins become global admins, so nobody loses the access they had before.

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_LAB = "default"
DEFAULT_ID = f"(SELECT id FROM laboratory WHERE name = '{DEFAULT_LAB}')"
APPEND_ONLY = ("review", "audit_event")
# 0002's triggers, which this migration must lift for a moment to file old audit rows.
SQLITE_AUDIT_TRIGGERS = tuple(
    f"CREATE TRIGGER audit_event_no_{event.lower()} BEFORE {event} ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event rows are append-only'); END"
    for event in ("UPDATE", "DELETE")
)


def _dialect() -> str:
    return op.get_bind().dialect.name


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


def _file_old_audit_rows() -> None:
    # Audit rows are append-only (0002's triggers); filing the existing ones in the default
    # laboratory is the one update ever made to them, by the schema owner, here.
    if _dialect() == "postgresql":
        op.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        op.execute(f"UPDATE audit_event SET laboratory_id = {DEFAULT_ID}")
        op.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
        op.execute(f"UPDATE audit_event SET laboratory_id = {DEFAULT_ID}")
        for statement in SQLITE_AUDIT_TRIGGERS:
            op.execute(statement)


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

    # audit_event stays nullable (system-wide events) and is not rebuilt on SQLite, which
    # would drop its append-only triggers with the old table.
    if _dialect() == "sqlite":
        op.execute(
            "ALTER TABLE audit_event ADD COLUMN laboratory_id INTEGER REFERENCES laboratory (id)"
        )
    else:
        op.add_column("audit_event", sa.Column("laboratory_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_audit_event_laboratory_id_laboratory",
            "audit_event",
            "laboratory",
            ["laboratory_id"],
            ["id"],
        )
    _file_old_audit_rows()
    op.create_index("ix_audit_event_laboratory", "audit_event", ["laboratory_id", "id"])

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
    op.drop_index("ix_audit_event_laboratory", table_name="audit_event")
    if _dialect() == "sqlite":
        # SQLite cannot drop a column with a foreign key in place: the table is rebuilt, and
        # its append-only triggers, dropped with the old table, are created again.
        with op.batch_alter_table("audit_event", schema=None, recreate="always") as batch_op:
            batch_op.drop_column("laboratory_id")
        for statement in SQLITE_AUDIT_TRIGGERS:
            op.execute(statement)
    else:
        op.drop_constraint("fk_audit_event_laboratory_id_laboratory", "audit_event")
        op.drop_column("audit_event", "laboratory_id")

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
