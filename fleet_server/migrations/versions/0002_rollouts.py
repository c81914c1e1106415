"""Rollouts and per-device signed assignments (the update path).

Revision ID: 0002_rollouts
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_rollouts"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "device_assignments",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("counter", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("rollout_id", sa.String(64), nullable=True),
        sa.Column("envelope", sa.Text(), nullable=False),
        _ts("issued_at"),
        _ts("expires_at"),
        _ts("refresh_after"),
        sa.Column("published_counter", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_device_assignments_refresh_after", "device_assignments", ["refresh_after"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("log", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("next_tick_at", nullable=True),
    )
    op.create_index("ix_rollouts_model", "rollouts", ["model"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_state", "rollouts")
    op.drop_index("ix_rollouts_model", "rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_device_assignments_refresh_after", "device_assignments")
    op.drop_table("device_assignments")
