"""predictions.stream_id, frame_ts and monitor_checks.stream_id: a logged video frame's stream, checked alone.

``visionloop stream`` and the ``/stream`` WebSocket fill ``stream_id`` (the stream's name) and ``frame_ts``
(the frame's time in its stream, seconds); REST and batch rows keep both empty. The index on
(stream_id, created_at) serves the monitor's per-stream window (``visionloop monitor --stream ID``), whose
checks are remembered apart from the whole version's (``monitor_checks.stream_id``; empty: every row).

A database adopted by 0001 whose predictions table was created on first use by code that already knew these
columns keeps them: only what is missing is added.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("predictions")}
    if "stream_id" not in have:
        op.add_column("predictions", sa.Column("stream_id", sa.String(length=200), nullable=True))
    if "frame_ts" not in have:
        op.add_column("predictions", sa.Column("frame_ts", sa.Float(), nullable=True))
    if "ix_predictions_stream" not in {i["name"] for i in inspector.get_indexes("predictions")}:
        op.create_index("ix_predictions_stream", "predictions", ["stream_id", "created_at"], unique=False)
    op.add_column("monitor_checks", sa.Column("stream_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monitor_checks") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("stream_id")
    op.drop_index("ix_predictions_stream", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("frame_ts")
        batch.drop_column("stream_id")
