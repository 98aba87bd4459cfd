"""label_queue.other_label, other_version: what the other model guessed where the disagreement rule fired.

The labeling page's disagreement badge shows it ("v1 said 7"); rows queued before this revision, and rows
no disagreement matched, keep both empty.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("label_queue", sa.Column("other_label", sa.String(length=200), nullable=True))
    op.add_column("label_queue", sa.Column("other_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("label_queue") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("other_version")
        batch.drop_column("other_label")
