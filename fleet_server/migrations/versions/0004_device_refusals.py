"""Device messages refused (or clamped) at ingest, counted per device, topic and reason.

Revision ID: 0004_device_refusals
Revises: 0003_telemetry
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_device_refusals"
down_revision = "0003_telemetry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_refusals",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(16), primary_key=True),
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_refusals")
