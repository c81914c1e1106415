"""Micro-batching: the rows of concurrent requests for one model answered by one runtime ``run``.

Two pure parts and a small driver, none of which touch a socket, a session or a real clock:

* ``decide``: whether a request runs now on its own, joins the open batch, or joins it and
  flushes it. A request that is alone (no batch open, nothing else ready on the loop) never
  waits; a batch never waits longer than ``BatchPolicy.max_wait_s`` (about 200 µs) nor grows
  past ``max_rows``.
* ``merge`` / ``split`` / ``run_merged``: stack the requests' matrices, run once, hand each
  request its own rows back. If the merged run fails, each request is run on its own so that
  one bad row fails only the request that sent it.
* ``MicroBatcher``: holds the open batch per key (model name) and flushes it through injected
  seams: ``others_ready()`` (is anything else about to run on this loop?), ``schedule(fn)``
  (run ``fn`` once the callbacks ready now have run: ``loop.call_soon``), ``clock()``.

Why "others ready" and not a timer: the agent answers a request inside the loop's
``data_received`` callback. Requests that arrive together are read in the same loop
iteration, one callback after another; a batch opened by the first is flushed by a callback
queued behind them, so they merge at no timed wait at all, and a lone request (nothing else
ready) runs at once, exactly as without batching. ``max_wait_s`` bounds the rare case of
other, slow callbacks between them.

It is not thread-safe: one event loop owns a ``MicroBatcher``. It does not parse input, run
models or encode answers; the caller's ``run_batch`` does.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")   # one request's item (e.g. its decoded payload)
R = TypeVar("R")   # one request's outcome

Roles = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BatchPolicy:
    """How long a batch may wait for company and how many rows it may hold."""

    max_wait_s: float = 200e-6
    max_rows: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.max_wait_s <= 0.01:
            raise ValueError(f"max_wait_s {self.max_wait_s} is outside 0-10 ms: a batch must not hold requests longer")
        if self.max_rows < 1:
            raise ValueError(f"max_rows {self.max_rows} must be at least 1")


class Decision(enum.Enum):
    ALONE = "alone"   # run now, on its own: no batch is open and nothing else is ready
    JOIN = "join"     # join the open batch (opening it if needed); a queued flush answers it
    FLUSH = "flush"   # join, then run the batch now: it is full or has waited long enough


def decide(policy: BatchPolicy, *, queued: int, waited_s: float, others_ready: bool) -> Decision:
    """The decision for one arriving request (pure).

    ``queued``: requests in the open batch (0: none open); ``waited_s``: how long its oldest
    has waited; ``others_ready``: whether other callbacks (maybe other requests) run before a
    queued flush would.
    """
    if queued == 0:
        return Decision.JOIN if others_ready and policy.max_rows > 1 else Decision.ALONE
    if queued + 1 >= policy.max_rows or waited_s >= policy.max_wait_s:
        return Decision.FLUSH
    return Decision.JOIN


def merge(matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """One matrix holding every request's rows, and the row offset where each request ends."""
    offsets = list(itertools.accumulate(len(m) for m in matrices))  # numpy's cumsum costs more on a few ints
    merged = matrices[0] if len(matrices) == 1 else np.concatenate(matrices, axis=0)
    return merged, offsets


def split(roles: Roles, offsets: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output role, in request order."""
    out, start = [], 0
    for end in offsets:
        out.append({role: values[start:end] for role, values in roles.items()})
        start = end
    return out


def run_merged(run: Callable[[np.ndarray], Roles], matrices: Sequence[np.ndarray]) -> list[dict[str, np.ndarray] | Exception]:
    """Run every request's matrix in one ``run``; if that fails, each alone, so that a failure
    is reported only to the requests whose own run fails."""
    if not matrices:
        return []
    merged, offsets = merge(matrices)
    try:
        roles = run(merged)
    except Exception as exc:
        if len(matrices) == 1:
            return [exc]
    else:
        if all(len(v) == offsets[-1] for v in roles.values()):
            return list(split(roles, offsets))
        # An output that is not one value per row cannot be split by rows: answer each alone.
    outcomes: list[dict[str, np.ndarray] | Exception] = []
    for matrix in matrices:
        try:
            outcomes.append(dict(run(matrix)))
        except Exception as exc:  # this request's own failure, and only this request's
            outcomes.append(exc)
    return outcomes


@dataclass
class _Batch(Generic[T, R]):
    opened: float
    items: list[T] = field(default_factory=list)
    deliveries: list[Callable[[R], None]] = field(default_factory=list)
    rows: int = 0


class MicroBatcher(Generic[T, R]):
    """The open batch per key; ``submit`` decides, ``flush`` runs a batch through ``run_batch``.

    ``run_batch(key, items)`` returns one outcome per item, in order (exceptions as values);
    each goes to the ``deliver`` its item came with. ``decisions`` counts what was decided,
    for tests and the bench.
    """

    def __init__(self, run_batch: Callable[[str, list[T]], Sequence[R]], *, policy: BatchPolicy | None = None,
                 others_ready: Callable[[], bool] = lambda: False,
                 schedule: Callable[[Callable[[], None]], Any] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.policy = policy or BatchPolicy()
        self._run_batch = run_batch
        self._others_ready = others_ready
        self._schedule = schedule
        self._clock = clock
        self._open: dict[str, _Batch[T, R]] = {}
        self.decisions: dict[Decision, int] = dict.fromkeys(Decision, 0)

    def submit(self, key: str, item: T, deliver: Callable[[R], None], rows: int = 1) -> Decision:
        """Hand one request over. ``ALONE``: the caller runs it itself now (``deliver`` is not
        called); otherwise ``deliver`` is called with its outcome when its batch runs."""
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > self.policy.max_rows:
            self.flush(key)  # it would overflow: the open batch runs first, this one starts afresh
            batch = None
        queued = len(batch.items) if batch else 0
        waited = self._clock() - batch.opened if batch else 0.0
        decision = decide(self.policy, queued=queued, waited_s=waited,
                          others_ready=self._schedule is not None and self._others_ready())
        if rows >= self.policy.max_rows and batch is None:
            decision = Decision.ALONE  # a big request is a batch by itself
        self.decisions[decision] += 1
        if decision is Decision.ALONE:
            return decision
        if batch is None:
            batch = self._open[key] = _Batch(self._clock())
            assert self._schedule is not None
            self._schedule(lambda: self.flush(key))
        batch.items.append(item)
        batch.deliveries.append(deliver)
        batch.rows += rows
        if decision is Decision.FLUSH or batch.rows >= self.policy.max_rows:
            self.flush(key)
        return decision

    def flush(self, key: str) -> None:
        """Run the open batch of ``key`` (nothing when none is open: it was flushed already)."""
        batch = self._open.pop(key, None)
        if batch is None:
            return
        try:
            outcomes = list(self._run_batch(key, batch.items))
        except Exception as exc:  # run_batch's own bug: every request of the batch gets it
            outcomes = [exc] * len(batch.items)  # type: ignore[list-item]
        if len(outcomes) != len(batch.items):
            raise RuntimeError(f"run_batch gave {len(outcomes)} outcomes for {len(batch.items)} requests")
        for deliver, outcome in zip(batch.deliveries, outcomes, strict=True):
            deliver(outcome)


def loop_others_ready(loop: Any) -> Callable[[], bool]:
    """Whether ``loop`` (asyncio's own event loop) has callbacks ready to run after this one.

    It reads ``BaseEventLoop._ready``, asyncio's queue of ready handles (a private attribute,
    stable since Python 3.4); a loop without it (uvloop) answers False: never batch, never wait.
    """
    ready = getattr(loop, "_ready", None)
    if ready is None:
        return lambda: False
    return lambda: bool(ready)
