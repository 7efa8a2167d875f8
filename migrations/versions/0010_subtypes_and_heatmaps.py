"""model generation 2: each result's B-ALL subtype and its probabilities, and the storage key
of its explanation heatmap

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subtype", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("subtype_probs", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("heatmap_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_column("heatmap_key")
        batch_op.drop_column("subtype_probs")
        batch_op.drop_column("subtype")
