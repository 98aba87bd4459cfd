"""Initial schema: the prediction log, the labeling queue and its scans, label-review decisions, drift alerts.

A database made before migrations, whose tables were created on first use (some or all of these five),
is adopted: the tables it has are kept as they are, with their rows, and the missing ones created.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _create(name: str, *columns: sa.Column) -> None:
    """Create the table with its indexes (``ix_<table>_<column>``), unless a pre-migration database has it."""
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *columns)


def upgrade() -> None:
    _create(
        "predictions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False, index=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("image_path", sa.Text, nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("feedback_label", sa.String(200), nullable=True),
        sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
    )
    _create(
        "label_queue",
        sa.Column("prediction_id", sa.String(36), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    )
    _create(
        "label_queue_scans",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("through", sa.DateTime(timezone=True), nullable=True),
        sa.Column("examined", sa.Integer, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
    )
    _create(
        "label_review",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("given_label", sa.String(200), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("new_label", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snapshot", sa.Text, nullable=True),
        sa.Column("data_version", sa.String(64), nullable=True),
    )
    _create(
        "alerts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
    )


def downgrade() -> None:
    for name in ("alerts", "label_review", "label_queue_scans", "label_queue", "predictions"):
        op.drop_table(name)
