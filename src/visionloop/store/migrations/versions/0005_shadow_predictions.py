"""shadow_predictions: a challenger's answers on live traffic beside the champion's (shadow scoring).

One row per image the challenger predicted off the answer's path (``serving.shadow``), keyed by the champion's
prediction id; read by ``visionloop shadow report`` and the gate (``registry.gate.shadow``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("champion_version", sa.String(length=64), nullable=False),
        sa.Column("champion_label", sa.String(length=200), nullable=False),
        sa.Column("champion_confidence", sa.Float(), nullable=False),
        sa.Column("challenger_version", sa.String(length=64), nullable=False),
        sa.Column("challenger_label", sa.String(length=200), nullable=False),
        sa.Column("challenger_confidence", sa.Float(), nullable=False),
        sa.Column("champion_ms", sa.Float(), nullable=False),
        sa.Column("challenger_ms", sa.Float(), nullable=False),
        sa.Column("features", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_shadow_versions", "shadow_predictions",
                    ["challenger_version", "champion_version", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_shadow_versions", table_name="shadow_predictions")
    op.drop_table("shadow_predictions")
