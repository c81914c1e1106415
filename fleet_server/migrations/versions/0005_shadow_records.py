"""Shadow records: a candidate's agreement and latency beside the serving version, per batch (issue 18).

Revision ID: 0005_shadow_records
Revises: 0004_device_refusals
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_shadow_records"
down_revision = "0004_device_refusals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_records",
        # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("serving", sa.String(128), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("agreed", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("relative_error_sum", sa.Float(), nullable=True),
        sa.Column("serving_buckets", sa.JSON(), nullable=False),
        sa.Column("candidate_buckets", sa.JSON(), nullable=False),
        sa.UniqueConstraint("device_id", "seq", "model", "version", name="uq_shadow_records_key"),
    )
    op.create_index("ix_shadow_records_model_ts", "shadow_records", ["model", "version", "ts"])


def downgrade() -> None:
    op.drop_index("ix_shadow_records_model_ts", table_name="shadow_records")
    op.drop_table("shadow_records")
