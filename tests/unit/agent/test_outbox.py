"""The telemetry outbox against real SQLite files: restarts, caps, and at-least-once order."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.outbox import Outbox, OutboxError
from edgefleet import telemetry


def test_restart_keeps_seq_and_contents(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        assert [box.append(b"a"), box.append(b"b"), box.append(b"c")] == [1, 2, 3]
        assert box.ack(1)
    with Outbox(path) as box:
        assert [(e.seq, e.payload) for e in box.pending()] == [(2, b"b"), (3, b"c")]
        assert box.append(b"d") == 4


def test_seq_survives_an_outbox_emptied_by_acks(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        for payload in (b"a", b"b"):
            box.ack(box.append(payload))
        assert box.pending() == []
    with Outbox(path) as box:
        assert box.append(b"c") == 3  # never reuse a seq the server has already stored


def test_cap_in_rows_drops_oldest_and_reports_the_count_in_the_next_append(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_rows=3) as box:
        for i in range(5):
            box.append(f"m{i}".encode())
        # seq 1 went when 4 came and is reported by 5; seq 2 went when 5 came.
        assert [(e.seq, e.dropped) for e in box.pending()] == [(3, 0), (4, 0), (5, 1)]
        assert box.stats().dropped_unreported == 1
        seen: list[tuple[int, int]] = []
        box.append(lambda seq, dropped: seen.append((seq, dropped)) or b"m5")
        assert seen == [(6, 1)]
        assert box.stats().dropped_unreported == 1  # appending m5 pushed seq 3 out
        assert [(e.seq, e.dropped) for e in box.pending()] == [(4, 0), (5, 1), (6, 1)]


def test_cap_in_bytes_drops_oldest(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=250) as box:
        for _ in range(5):
            box.append(b"x" * 100)
        assert [(e.seq, e.dropped) for e in box.pending()] == [(4, 1), (5, 1)]
        assert box.stats().bytes == 200
        assert box.stats().dropped_unreported == 1  # 1 carried by 4, 1 by 5, 1 still to report


def test_dropping_a_row_that_carried_a_count_passes_the_count_on(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_rows=1) as box:
        box.append(b"1")
        box.append(b"2")  # drops 1
        box.append(b"3")  # carries 1, drops 2
        assert [(e.seq, e.dropped) for e in box.pending()] == [(3, 1)]
        assert box.stats().dropped_unreported == 1
        box.append(b"4")  # drops 3, which carried 1: 2 lost since the last delivered
        assert [(e.seq, e.dropped) for e in box.pending()] == [(4, 1)]
        assert box.stats().dropped_unreported == 2


def test_a_payload_bigger_than_the_cap_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=10) as box:
        box.append(b"ok")
        with pytest.raises(OutboxError, match="does not fit"):
            box.append(b"y" * 11)
        assert box.append(b"ok") == 2
        assert [e.payload for e in box.pending()] == [b"ok", b"ok"]


def test_a_failing_factory_rolls_back_and_consumes_no_seq(tmp_path: Path) -> None:
    def broken(seq: int, dropped: int) -> bytes:
        raise RuntimeError("encoder bug")

    with Outbox(tmp_path / "o.sqlite") as box:
        with pytest.raises(RuntimeError):
            box.append(broken)
        assert box.append(b"a") == 1


def test_telemetry_batches_carry_their_own_seq_and_drop_count(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_rows=2) as box:
        for i in range(4):
            box.append(lambda seq, dropped, i=i: telemetry.encode(
                telemetry.TelemetryBatch("dev-1", seq, 1000.0 + i, dropped=dropped)))
        decoded = [telemetry.decode(e.payload) for e in box.pending()]
        assert [(b.seq, b.dropped) for b in decoded] == [(3, 0), (4, 1)]


def test_acks_from_another_thread_while_appending(tmp_path: Path) -> None:
    acked: list[int] = []
    with Outbox(tmp_path / "o.sqlite") as box:
        done = threading.Event()

        def link() -> None:  # what the MQTT thread does on PUBACKs
            while not done.is_set() or box.pending(1):
                for entry in box.pending(10):
                    assert box.ack(entry.seq)
                    acked.append(entry.seq)

        thread = threading.Thread(target=link)
        thread.start()
        for i in range(300):
            box.append(str(i).encode())
        done.set()
        thread.join(30)
        assert box.pending() == [] and acked == list(range(1, 301))


def test_ack_of_unknown_seq_is_false(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        assert not box.ack(42)


def test_unwritable_location_names_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutboxError, match="state directory"):
        Outbox(blocker / "outbox.sqlite")


def test_uses_wal_journal(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        box.append(b"a")
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# ---- property: publish/ack/restart in any order --------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 40)),
        st.tuples(st.just("deliver"), st.integers(1, 4)),  # publish up to n pending, all PUBACKed
        st.tuples(st.just("lost"), st.integers(1, 4)),  # published, PUBACK never came (link died)
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, max_rows=st.integers(1, 8), max_bytes=st.integers(40, 200))
def test_delivery_is_in_order_and_every_append_is_delivered_or_counted(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], max_rows: int, max_bytes: int) -> None:
    path = tmp_path_factory.mktemp("outbox") / "o.sqlite"
    box = Outbox(path, max_rows=max_rows, max_bytes=max_bytes)
    appended: list[int] = []
    first_deliveries: list[int] = []
    delivered: set[int] = set()
    reported_drops = 0
    # A model of what the outbox must hold: pending (seq, size), oldest first.
    model: list[tuple[int, int]] = []
    try:
        for op, n in ops:
            if op == "append":
                seq = box.append(b"p" * n)
                appended.append(seq)
                model.append((seq, n))
                # Over a cap the oldest go, and only then: nothing is lost while under it.
                while len(model) > max_rows or sum(size for _, size in model) > max_bytes:
                    model.pop(0)
                assert [e.seq for e in box.pending(10_000)] == [s for s, _ in model]
            elif op == "restart":
                box.close()
                box = Outbox(path, max_rows=max_rows, max_bytes=max_bytes)
            else:
                for entry in box.pending(n):
                    if op == "deliver":
                        if entry.seq not in delivered:
                            first_deliveries.append(entry.seq)
                            reported_drops += entry.dropped
                        delivered.add(entry.seq)
                        box.ack(entry.seq)
                        model = [m for m in model if m[0] != entry.seq]
        # The link comes back for good: everything left goes out.
        for entry in box.pending(10_000):
            if entry.seq not in delivered:
                first_deliveries.append(entry.seq)
                reported_drops += entry.dropped
            box.ack(entry.seq)
        unreported = box.stats().dropped_unreported
    finally:
        box.close()
    assert appended == list(range(1, len(appended) + 1))
    assert first_deliveries == sorted(set(first_deliveries))  # strictly increasing
    lost = len(appended) - len(first_deliveries)
    assert reported_drops + unreported == lost  # every drop is counted, once


_WRITER = """
import sys
from agent.outbox import Outbox
box = Outbox(sys.argv[1], max_rows=50)
while True:
    seq = box.append(lambda seq, dropped: f"{seq}:{dropped}:".encode() + b"x" * 200)
    if seq == 80:  # past the cap of 50: drops are happening too
        print("past", flush=True)
"""


def test_sigkill_while_appending_leaves_whole_rows_and_a_seq_that_continues(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"past"
        time.sleep(0.05)  # let it get into the middle of some append
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    with Outbox(path, max_rows=50) as box:
        entries = box.pending(1000)
        seqs = [e.seq for e in entries]
        assert len(seqs) <= 50 and seqs[-1] >= 80
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous: nothing torn out
        for entry in entries:
            seq, dropped, rest = entry.payload.split(b":", 2)
            assert (int(seq), int(dropped), len(rest)) == (entry.seq, entry.dropped, 200)
        assert box.append(b"after") == seqs[-1] + 1
