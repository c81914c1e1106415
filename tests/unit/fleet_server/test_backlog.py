"""The backlog a batched writer drains: drain waits for zero, and gives up at its deadline."""

from __future__ import annotations

import threading

from fleet_server.backlog import Backlog


def test_drain_returns_once_every_item_is_done() -> None:
    backlog = Backlog()
    backlog.add()
    backlog.add(2)
    worker = threading.Timer(0.05, backlog.done, args=(3,))
    worker.start()
    assert backlog.drain(timeout=5)
    worker.join()


def test_drain_times_out_while_work_is_pending() -> None:
    backlog = Backlog()
    backlog.add()
    assert not backlog.drain(timeout=0.05)
    backlog.done(1)
    assert backlog.drain(timeout=0)
