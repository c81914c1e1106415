"""The server's confirmation of stored telemetry: ``telemetry_ack`` commands to the devices.

The ingest's writer calls ``TelemetryAcks`` after each commit with the seqs of each device's
batches in that write (``TelemetryIngest(on_committed=...)``); one command per device per write
goes out on the device's ``commands`` topic (several if it confirms more than
``edgefleet.telemetry.MAX_ACK_SEQS``). So at the usual one batch per device per interval, the
cost is one small message per batch stored; a device catching up after an outage gets one
command per write for hundreds of batches.

QoS 0, not 1: a lost confirmation costs one repeat of the batch, which the (device, seq) dedupe
makes harmless and which is confirmed in turn; QoS 1 would add a PUBACK a message, take room in
paho's in-flight window beside the assignments, and queue in paho while disconnected. And it
never blocks the writer: ``send`` hands the messages to paho and returns.

It does not decide what is confirmed (the ingest does) and holds no connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from edgefleet import topics
from edgefleet.telemetry import ack_commands

log = logging.getLogger(__name__)

Send = Callable[[Sequence[tuple[str, bytes]]], int]
"""Publishes (topic, payload) messages at QoS 0 without waiting; how many were taken."""


def confirmation_messages(done: Mapping[str, Sequence[int]]) -> list[tuple[str, bytes]]:
    """The (topic, payload) of each ``telemetry_ack`` command confirming ``done`` (seqs by device)."""
    return [(topics.commands(device_id), payload) for device_id, seqs in done.items()
            for payload in ack_commands(seqs)]


class TelemetryAcks:
    """``on_committed`` for ``TelemetryIngest``: builds the commands and sends them through ``send``."""

    def __init__(self, send: Callable[[], Send | None]) -> None:
        # A getter: the ingest starts before the connection the commands go out on.
        self._send = send

    def __call__(self, done: Mapping[str, Sequence[int]]) -> int:
        send = self._send()
        if send is None:
            return 0  # not connected yet: the devices send those batches again and are confirmed then
        return send(confirmation_messages(done))
