"""End-to-end confirmation of telemetry: a batch the broker acknowledged and then lost is sent
again until the server confirms it, and an agent talking to a server that never confirms
behaves as before (the PUBACK deletes).

The reporter runs with a real outbox file and real batches; the broker and the server are
small in-memory models of what they do to messages (a broker that PUBACKs and then loses some,
a server that stores each seq once and confirms over QoS 0, itself lossy), on an injected clock.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.confirmations import DEFAULT_MAX_FACTOR, Confirmations
from agent.metrics import Metrics
from agent.outbox import Outbox
from agent.reporter import Reporter
from edgefleet import telemetry

INTERVAL_S = 10.0


def test_backoff_doubles_up_to_the_cap_and_a_confirmation_ends_it() -> None:
    c = Confirmations(5.0, max_factor=4)
    c.sent(1, now=0.0)
    assert not c.any_due(4.9) and c.due(4.9, 10) == []
    assert c.due(5.0, 10) == [1]
    waits = []
    now = 5.0
    for _ in range(4):
        c.sent(1, now)  # the resend's PUBACK
        late = now
        while not c.due(late, 10):
            late += 0.5
        waits.append(late - now)
        now = late
    assert waits == [10.0, 20.0, 20.0, 20.0]  # 5 x 2, x 4 (the cap), and stays there
    assert c.due(now, 10, skip=[1]) == []  # in flight again: not handed out twice
    assert c.confirm([1, 2]) == 1 and len(c) == 0 and c.due(now + 1000, 10) == []


def _reporter(path: Path, clock: list[float], confirm_timeout_s: float | None = None) -> Reporter:
    return Reporter(Metrics(), device_id="dev-1", outbox=Outbox(path / "outbox.sqlite"), interval_s=INTERVAL_S,
                    monotonic=lambda: clock[0], wall_clock=lambda: 1_700_000_000.0 + clock[0],
                    confirm_timeout_s=confirm_timeout_s)


class _World:
    """The broker and the server as the device sees them."""

    def __init__(self, lose_broker: set[int], lose_ack: set[int], *, confirms: bool = True) -> None:
        self.confirms = confirms  # False: a server from before telemetry_ack
        self.next_mid = 0
        self.inflight: dict[int, bytes] = {}
        self.lose_broker = lose_broker  # publish numbers the broker PUBACKs and then loses
        self.lose_ack = lose_ack  # confirmation numbers lost on the way to the device (QoS 0)
        self.published = 0
        self.acks_sent = 0
        self.stored: dict[int, int] = {}  # seq -> copies that reached the server

    def publish(self, payload: bytes) -> int:
        self.next_mid += 1
        self.inflight[self.next_mid] = payload
        return self.next_mid

    def step(self, reporter: Reporter) -> None:
        """The broker PUBACKs everything in flight; the server stores what arrived and confirms it."""
        arrived = []
        for mid, payload in list(self.inflight.items()):
            del self.inflight[mid]
            self.published += 1
            reporter.acked(mid)
            if self.published not in self.lose_broker:
                arrived.append(telemetry.decode(payload).seq)
        for seq in arrived:
            self.stored[seq] = self.stored.get(seq, 0) + 1
        if arrived and self.confirms:
            self.acks_sent += 1
            if self.acks_sent not in self.lose_ack:
                reporter.confirmed(sorted(set(arrived)))


@settings(max_examples=25, deadline=None)
@given(batches=st.integers(1, 12), lose_broker=st.sets(st.integers(1, 30), max_size=8),
       lose_ack=st.sets(st.integers(2, 30), max_size=6))
@example(batches=4, lose_broker=set(), lose_ack={2, 3, 4, 7, 8})  # CI, stop 21: a row needed 300 s of backoff
def test_every_batch_is_stored_though_the_broker_and_the_acks_lose_messages(
        batches: int, lose_broker: set[int], lose_ack: set[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = [0.0]
        reporter = _reporter(Path(tmp), clock)
        world = _World(lose_broker, lose_ack)
        # The first batch is confirmed before any loss: that is what turns confirmation on.
        reporter.close_interval()
        reporter.pump(world.publish)
        world.lose_broker.discard(1)
        world.step(reporter)
        assert reporter.confirming
        for _ in range(batches - 1):
            clock[0] += INTERVAL_S
            reporter.close_interval()
            reporter.pump(world.publish)
            world.step(reporter)
        # The link keeps ticking: late rows go out again. A row whose every copy or confirmation is
        # lost waits timeout * 2**(n-1) (capped) before its n-th resend, so the horizon is the sum of
        # the waits for one row hit by every loss there is.
        timeout_s = 2 * INTERVAL_S
        horizon = sum(timeout_s * min(2 ** n, DEFAULT_MAX_FACTOR)
                      for n in range(len(lose_broker) + len(lose_ack) + 1))
        step_s = 5.0
        for _ in range(int(horizon / step_s) + 2):
            if reporter.outbox is not None and reporter.outbox.stats().rows == 0:
                break
            clock[0] += step_s
            reporter.pump(world.publish)
            world.step(reporter)
        assert reporter.outbox is not None
        assert reporter.outbox.stats().rows == 0 and reporter.unconfirmed() == 0
        assert sorted(world.stored) == list(range(1, batches + 1))  # nothing lost; the server dedupes copies
        lost = {n for n in lose_broker if n <= world.published}
        if lost:
            assert reporter.resent >= 1
        reporter.outbox.close()


def test_a_server_that_never_confirms_gets_todays_behaviour(tmp_path: Path) -> None:
    clock = [0.0]
    reporter = _reporter(tmp_path, clock)
    world = _World(lose_broker={2}, lose_ack=set(), confirms=False)
    for _ in range(3):
        reporter.close_interval()
        reporter.pump(world.publish)
        world.step(reporter)
        clock[0] += 5 * INTERVAL_S
    assert reporter.outbox is not None
    assert reporter.outbox.stats().rows == 0 and not reporter.confirming  # deleted on PUBACK
    reporter.pump(world.publish)
    assert reporter.resent == 0 and world.inflight == {}


def test_confirmation_mode_survives_a_restart_and_unconfirmed_rows_go_out_again(tmp_path: Path) -> None:
    clock = [0.0]
    reporter = _reporter(tmp_path, clock)
    world = _World(lose_broker={2, 3}, lose_ack=set())
    for _ in range(3):
        reporter.close_interval()
        reporter.pump(world.publish)
        world.step(reporter)
    assert reporter.confirming and sorted(world.stored) == [1]
    assert reporter.outbox is not None and reporter.outbox.stats().rows == 2  # broker PUBACKed, server never got them
    reporter.outbox.close()
    again = _reporter(tmp_path, clock)  # a restart before the resend deadline
    assert again.confirming
    world.lose_broker.clear()
    assert again.pump(world.publish) == 2  # every kept row goes out at start
    world.step(again)
    assert sorted(world.stored) == [1, 2, 3]
    assert again.outbox is not None and again.outbox.stats().rows == 0
    again.outbox.close()


@pytest.mark.parametrize("payload", [
    {"command": "telemetry_ack", "args": {"seqs": [1, 2]}},
])
def test_the_ack_command_is_what_the_contract_says(payload: dict[str, object]) -> None:
    import json

    assert [json.loads(p) for p in telemetry.ack_commands([2, 1, 2])] == [payload]
    many = telemetry.ack_commands(range(1, telemetry.MAX_ACK_SEQS + 2))
    assert len(many) == 2 and json.loads(many[1])["args"]["seqs"] == [telemetry.MAX_ACK_SEQS + 1]
