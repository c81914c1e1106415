"""Rollouts as a header row plus one row per device (issue 13): a batch of events costs what it changes.

Until now ``rollouts.document`` held the whole ``Rollout.to_dict()`` (every device's record), and
the engine loaded and stored it whole for every transaction. It is split here into
``rollouts.spec`` (what never changes after create: model, selector, targets, policy, wave plan),
``rollouts.header`` (state, current wave, times, stages) and ``rollout_devices`` (one row per
device record), plus ``rollouts.revision``, the counter that lets a replica reuse the rollout
it holds in memory. Existing documents are split as they are; ``downgrade`` joins them again.

Self-contained on purpose (no import of ``fleet_server.rollouts``): a migration must keep
meaning what it meant when it was written, whatever the code becomes.

Revision ID: 0006_rollout_devices
Revises: 0005_shadow_records
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006_rollout_devices"
down_revision = "0005_shadow_records"
branch_labels = None
depends_on = None

# Rollout.to_dict()'s keys by part, as they stand at this revision (fleet_server/rollouts/machine.py).
SPEC_KEYS = ("schema", "id", "model", "version", "selector", "targets", "policy", "plan")
HEADER_KEYS = ("state", "current_wave", "wave_started_at", "started_at", "finished_at", "yanked", "halt_reason",
               "stages")
TIME_FIELDS = ("assigned_at", "finished_at", "offline_since", "rolled_back_at")
_CHUNK = 1000


def _ts(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


# Lightweight table constructs for the data step (the ORM classes may change later).
rollouts = sa.table("rollouts", sa.column("id", sa.String()), sa.column("document", sa.JSON()),
                    sa.column("spec", sa.JSON()), sa.column("header", sa.JSON()))
rollout_devices = sa.table(
    "rollout_devices", *(sa.column(c, sa.String()) for c in ("rollout_id", "device_id", "profile", "status",
                                                             "previous_version", "last_event", "reason", "serves")),
    sa.column("wave", sa.Integer()), sa.column("counter", sa.Integer()), sa.column("online", sa.Boolean()),
    sa.column("joined_late", sa.Boolean()), *(sa.column(c, sa.DateTime(timezone=True)) for c in TIME_FIELDS))


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def device_row(rollout_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``DeviceRecord.to_dict()`` as a ``rollout_devices`` row (``serves``/``counter`` absent in old documents)."""
    return {"rollout_id": rollout_id, "device_id": str(record["device_id"]), "profile": str(record["profile"]),
            "wave": record.get("wave"), "status": str(record["status"]),
            "previous_version": record.get("previous_version"), "online": bool(record.get("online", True)),
            "joined_late": bool(record.get("joined_late", False)), "last_event": record.get("last_event"),
            "reason": str(record.get("reason") or ""), "serves": record.get("serves"), "counter": record.get("counter"),
            **{f: _time(record.get(f)) for f in TIME_FIELDS}}


def split(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Mapping[str, Any]]]:
    """A stored rollout document as (spec, header, device records)."""
    spec = {k: document[k] for k in SPEC_KEYS if k in document}
    header = {k: document[k] for k in HEADER_KEYS if k in document}
    header.setdefault("stages", [])  # documents from before issue 18 have none
    return spec, header, list(document.get("devices") or ())


def _create_rollout_devices() -> None:
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id"), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("previous_version", sa.String(128), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("joined_late", sa.Boolean(), nullable=False),
        sa.Column("last_event", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        *(_ts(f) for f in TIME_FIELDS),
        sa.Column("serves", sa.String(128), nullable=True),
        sa.Column("counter", sa.Integer(), nullable=True),
    )
    op.create_index("ix_rollout_devices_status", "rollout_devices", ["rollout_id", "status"])


def upgrade() -> None:
    bind = op.get_bind()
    documents = bind.execute(sa.select(rollouts.c.id, rollouts.c.document)).all()
    # The rollouts table is altered before rollout_devices references it: SQLite's batch mode
    # copies and drops the table, which foreign keys pointing at it would forbid.
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("header", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    for rollout_id, document in documents:
        spec, header, _ = split(document)
        bind.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(spec=spec, header=header))
    with op.batch_alter_table("rollouts") as batch:
        batch.alter_column("spec", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("header", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("document")
    _create_rollout_devices()
    for rollout_id, document in documents:
        rows = [device_row(rollout_id, r) for r in split(document)[2]]
        for start in range(0, len(rows), _CHUNK):
            bind.execute(rollout_devices.insert(), rows[start:start + _CHUNK])


def downgrade() -> None:
    bind = op.get_bind()
    columns = [c for c in rollout_devices.c if c.name != "rollout_id"]
    documents: dict[str, dict[str, Any]] = {}
    for rollout_id, spec, header in bind.execute(sa.select(rollouts.c.id, rollouts.c.spec, rollouts.c.header)).all():
        records = []
        for row in bind.execute(sa.select(*columns).where(rollout_devices.c.rollout_id == rollout_id)
                                .order_by(rollout_devices.c.device_id)).mappings():
            record = dict(row)
            for f in TIME_FIELDS:
                moment = record[f]
                record[f] = None if moment is None else (
                    moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).isoformat()
            records.append(record)
        documents[rollout_id] = {**spec, **header, "devices": records}
    op.drop_index("ix_rollout_devices_status", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("document", sa.JSON(), nullable=True))
    for rollout_id, document in documents.items():
        bind.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(document=document))
    with op.batch_alter_table("rollouts") as batch:
        batch.alter_column("document", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("revision")
        batch.drop_column("header")
        batch.drop_column("spec")
