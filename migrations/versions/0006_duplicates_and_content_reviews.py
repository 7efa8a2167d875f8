"""every file its row: duplicates recorded (duplicate_of_id) and rejection codes; one review
history per image content (review.sha256)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_TRIGGER = (
    "CREATE TRIGGER review_no_update BEFORE UPDATE ON review "
    "BEGIN SELECT RAISE(ABORT, 'review rows are append-only'); END"
)


@contextmanager
def _review_writable() -> Iterator[None]:
    """Lift migration 0002's append-only trigger on ``review`` for this migration's own
    rewrite of existing rows, and put it back in the same transaction."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("ALTER TABLE review DISABLE TRIGGER review_append_only")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS review_no_update")
    yield
    if dialect == "postgresql":
        op.execute("ALTER TABLE review ENABLE TRIGGER review_append_only")
    elif dialect == "sqlite":
        op.execute(SQLITE_TRIGGER)


def _renumber_per_content() -> None:
    """Copies of one content decided on separately before this migration each have a seq 1:
    number their rows again as one history, in the order they were made (negative first, so
    that no intermediate state repeats an (image_id, seq) pair)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, sha256, seq FROM review ORDER BY sha256, created_at, id")
    ).all()
    changes = []
    for _, group in groupby(rows, key=lambda r: r.sha256):
        for new_seq, row in enumerate(group, start=1):
            if row.seq != new_seq:
                changes.append({"id": row.id, "seq": new_seq})
    if not changes:
        return
    bind.execute(sa.text("UPDATE review SET seq = -(:seq) WHERE id = :id"), changes)
    bind.execute(sa.text("UPDATE review SET seq = -seq WHERE seq < 0"))


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason_code", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column(
                "duplicate_of_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sha256", sa.String(length=64), nullable=False, server_default="")
        )
    with _review_writable():
        op.execute(
            "UPDATE review SET sha256 = "
            "(SELECT image.sha256 FROM image WHERE image.id = review.image_id)"
        )
        _renumber_per_content()
    op.create_index("uq_review_sha256_seq", "review", ["sha256", "seq"], unique=True)


def downgrade() -> None:
    # Plain DROP COLUMN (see 0004): rebuilding these tables would trip their children's
    # foreign keys and drop review's triggers. Duplicate rows stay, in a state older code
    # counts as finished.
    op.drop_index("uq_review_sha256_seq", table_name="review")
    with op.batch_alter_table("review", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("sha256")
    with op.batch_alter_table("image", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("duplicate_of_id")
        batch_op.drop_column("reason_code")
