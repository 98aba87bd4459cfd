"""monitor_checks: the last check of each model version, so a check with nothing new does nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("n_predictions", sa.Integer(), nullable=False),
        sa.Column("newest_prediction_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("newest_feedback_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_checks_model", "monitor_checks", ["model_name", "model_version"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_monitor_checks_model", table_name="monitor_checks")
    op.drop_table("monitor_checks")
