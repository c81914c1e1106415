"""Telemetry batches and records (stored once per device and seq), device events, alert episodes.

Revision ID: 0003_telemetry
Revises: 0002_rollouts
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_telemetry"
down_revision = "0002_rollouts"
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "telemetry_batches",
        _id(),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts("ts"),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        _ts("received_at"),
        sa.UniqueConstraint("device_id", "seq", name="uq_telemetry_batches_device_seq"),
    )
    op.create_index("ix_telemetry_batches_ts", "telemetry_batches", ["ts"])
    op.create_table(
        "telemetry_records",
        _id(),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        _ts("ts"),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("drift", sa.JSON(), nullable=False),
        sa.Column("feedback_labels", sa.Integer(), nullable=False),
        sa.Column("feedback_correct", sa.Integer(), nullable=False),
        sa.UniqueConstraint("device_id", "seq", "model", "version", name="uq_telemetry_records_key"),
    )
    op.create_index("ix_telemetry_records_model_ts", "telemetry_records", ["model", "version", "ts"])
    op.create_index("ix_telemetry_records_device_ts", "telemetry_records", ["device_id", "ts"])
    op.create_table(
        "device_events",
        _id(),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        _ts("ts"),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.UniqueConstraint("device_id", "event_id", name="uq_device_events_device_event"),
    )
    op.create_index("ix_device_events_device_ts", "device_events", ["device_id", "ts"])
    op.create_table(
        "alert_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("episodes", sa.JSON(), nullable=False),
        _ts("evaluated_at", nullable=True),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
    op.drop_index("ix_device_events_device_ts", "device_events")
    op.drop_table("device_events")
    op.drop_index("ix_telemetry_records_device_ts", "telemetry_records")
    op.drop_index("ix_telemetry_records_model_ts", "telemetry_records")
    op.drop_table("telemetry_records")
    op.drop_index("ix_telemetry_batches_ts", "telemetry_batches")
    op.drop_table("telemetry_batches")
