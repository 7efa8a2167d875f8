"""specimens (accession per image, append-only sign-offs), webhooks with a delivery outbox,
and retention (image.purged_at)

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: SQLite's table copy would drop ``image``, and the
    # cascade to its reviews would trip their append-only trigger (SQLite >= 3.35 drops columns).
    op.add_column("image", sa.Column("specimen_id", sa.String(length=64), nullable=True))
    op.add_column("image", sa.Column("specimen_source", sa.String(length=255), nullable=True))
    op.add_column("image", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_image_specimen", "image", ["specimen_id", "id"], unique=False)

    op.create_table(
        "specimen_signoff",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("specimen_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("interpretation", sa.String(length=32), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("amends_id", BIG_ID, nullable=True),
        sa.Column("signed_content", sa.JSON(), nullable=False),
        sa.Column("signed_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["amends_id"], ["specimen_signoff.id"]),
        sa.ForeignKeyConstraint(["signed_by_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("specimen_id", "seq", name="uq_signoff_specimen_seq"),
    )
    op.create_index("ix_signoff_created", "specimen_signoff", ["created_at"], unique=False)
    # Sign-offs are append-only like reviews and audit events (function of migration 0002).
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER specimen_signoff_append_only BEFORE UPDATE OR DELETE ON "
            "specimen_signoff FOR EACH ROW EXECUTE FUNCTION leukoscreen_append_only()"
        )
    elif op.get_bind().dialect.name == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER specimen_signoff_no_{event.lower()} BEFORE {event} ON "
                "specimen_signoff BEGIN SELECT RAISE(ABORT, "
                "'specimen_signoff rows are append-only'); END"
            )

    op.create_table(
        "webhook",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhook.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("webhook_id", "event", "subject", name="uq_delivery_event"),
    )
    op.create_index(
        "ix_delivery_state_updated", "webhook_delivery", ["state", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_state_updated", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS specimen_signoff_append_only ON specimen_signoff")
    op.drop_index("ix_signoff_created", table_name="specimen_signoff")
    op.drop_table("specimen_signoff")
    op.drop_index("ix_image_specimen", table_name="image")
    for column in ("purged_at", "specimen_source", "specimen_id"):
        op.drop_column("image", column)
