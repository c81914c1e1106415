"""Parsing device messages into presence: pure, with the time passed in."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet import topics
from fleet_server.registry.presence import PresenceMessageError, parse_message

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_reported_online_carries_the_document() -> None:
    doc = {"device_id": "dev-a", "online": True, "models": {"digits": {"version": "1.0.0"}}}
    update = parse_message(topics.reported("dev-a"), json.dumps(doc).encode(), NOW)
    assert update is not None and update.online is True and update.reported == doc and update.at == NOW


def test_last_will_marks_offline_and_keeps_the_last_report() -> None:
    update = parse_message(topics.reported("dev-a"), b'{"device_id": "dev-a", "online": false}', NOW)
    assert update is not None and update.online is False and update.reported is None


def test_events_prove_liveness_only() -> None:
    update = parse_message(topics.events("dev-a"), b'{"device_id": "dev-a", "event": "staged"}', NOW)
    assert update is not None and update.online is None


def test_cleared_retained_message_is_ignored() -> None:
    assert parse_message(topics.reported("dev-a"), b"", NOW) is None


def test_telemetry_is_not_presence() -> None:
    assert parse_message(topics.telemetry("dev-a"), b"{}", NOW) is None


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"online": "yes"}', b'{"device_id": "dev-b", "online": true}'])
def test_malformed_or_spoofed_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(PresenceMessageError):
        parse_message(topics.reported("dev-a"), payload, NOW)


@given(topic=st.text(max_size=60), payload=st.binary(max_size=200))
def test_anything_parses_or_raises_the_one_error(topic: str, payload: bytes) -> None:
    try:
        update = parse_message(topic, payload, NOW)
    except PresenceMessageError:
        return
    # Whatever is accepted speaks only for the device whose topic it came on.
    assert update is None or topic.split("/")[3] == update.device_id
