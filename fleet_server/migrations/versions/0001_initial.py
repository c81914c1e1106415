"""Initial schema: models, devices, enrollment tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("target_path", sa.String(300), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("yanked", sa.Boolean(), nullable=False),
        _ts("yanked_at", nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_index("ix_models_name", "models", ["name"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("mqtt_username", sa.String(64), nullable=False, unique=True),
        sa.Column("mqtt_password_hash", sa.String(255), nullable=False),
        sa.Column("api_token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        _ts("last_seen", nullable=True),
        sa.Column("reported", sa.JSON(), nullable=True),
        sa.Column("assignment_counter", sa.Integer(), nullable=False, server_default="0"),
        _ts("enrolled_at"),
        _ts("revoked_at", nullable=True),
    )
    op.create_index("ix_devices_profile", "devices", ["profile"])
    op.create_index("ix_devices_status", "devices", ["status"])
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("enrollment_tokens")
    op.drop_index("ix_devices_status", "devices")
    op.drop_index("ix_devices_profile", "devices")
    op.drop_table("devices")
    op.drop_index("ix_models_name", "models")
    op.drop_table("models")
