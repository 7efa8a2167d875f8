"""worker heartbeats: which pool processes are alive, on which queues, doing what; an index
on result.scored_at for the last hour's routes in /metrics

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeat",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_task_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("task_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("images_last_minute", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("host", "pid", name="uq_worker_heartbeat_process"),
    )
    with op.batch_alter_table("worker_heartbeat", schema=None) as batch_op:
        batch_op.create_index("ix_worker_heartbeat_last_beat", ["last_beat_at"], unique=False)
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.create_index("ix_result_scored_at", ["scored_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_index("ix_result_scored_at")
    with op.batch_alter_table("worker_heartbeat", schema=None) as batch_op:
        batch_op.drop_index("ix_worker_heartbeat_last_beat")
    op.drop_table("worker_heartbeat")
