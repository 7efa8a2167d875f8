"""route per result (flagged / cleared / manual_review) with its reason and scores;
batch drift; the gate each model version was fitted with

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        # The server default stays: a row written without a route goes to a person, never
        # silently cleared (and changing it later would make SQLite rebuild the table, which
        # its reviews' foreign keys forbid). Results from before the gate keep their verdict.
        batch_op.add_column(
            sa.Column("route", sa.String(length=16), nullable=False, server_default="manual_review")
        )
        batch_op.add_column(sa.Column("route_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("domain_distance", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch_op.create_index("ix_result_batch_route", ["batch_id", "route"], unique=False)
    op.execute("UPDATE result SET route = CASE WHEN flagged THEN 'flagged' ELSE 'cleared' END")
    with op.batch_alter_table("batch", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drift", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gate", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 has it): recreating a parent table in
    # batch mode would trip the foreign keys of its existing child rows.
    with op.batch_alter_table("model_version", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("gate")
    with op.batch_alter_table("batch", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("drift")
    with op.batch_alter_table("result", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_result_batch_route")
        batch_op.drop_column("quality")
        batch_op.drop_column("domain_distance")
        batch_op.drop_column("route_reason")
        batch_op.drop_column("route")
