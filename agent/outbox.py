"""The telemetry outbox: a bounded, crash-safe store-and-forward queue on the device's disk.

Every message the agent must deliver at least once (telemetry batches, events) is appended
here first and deleted only after the broker acknowledged it (QoS 1 PUBACK), so a device that
is offline for hours, or loses power, delivers everything when the link returns, in order.

    outbox = Outbox(state_dir / "outbox.sqlite", max_bytes=8 << 20, max_rows=20_000)
    seq = outbox.append(lambda seq, dropped: telemetry.encode(make_batch(seq, dropped)))
    for entry in outbox.pending(100):            # seq order
        publish(entry.payload) -> on PUBACK: outbox.ack(entry.seq)

* ``seq`` is device-scoped and strictly increasing. The next value is persisted with the
  rows, in the same transaction, so it survives restarts (and an outbox emptied by acks).
* The store is bounded in bytes (of payload; the file adds SQLite's page and WAL overhead)
  and rows. When an append takes it over a cap the OLDEST rows
  are deleted. Every deletion is counted; the count is handed to the next ``append`` (the
  ``dropped`` argument of the payload factory) and then reset, so it travels in the next batch.
  A dropped row's own carried count is added too: the counts in delivered batches always add
  up to the rows lost, however many times the cap bites before the link returns.
* Crash safety is SQLite's: WAL journal, ``synchronous=FULL`` (a committed append survives a
  power cut), each operation one transaction. A crash between PUBACK and ``ack`` publishes that
  row again: delivery is at-least-once and the server deduplicates by (device, seq).
* Confirmation (``confirming``): once the server has confirmed a stored batch (``telemetry_ack``,
  docs/telemetry.md "Store and forward"), the flag is set in the file and the reporter deletes
  a row on the server's confirmation instead of the broker's PUBACK (``ack_many``), so a
  broker that loses a message it acknowledged loses nothing (``agent.confirmations``).

It does not publish anything (the link does) and does not know what a payload means: it is
opaque bytes, usually ``edgefleet.telemetry.encode`` output.

    AgentError (agent.errors)
    └── OutboxError     the outbox file cannot be opened or written, or a payload is too big
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError

DEFAULT_MAX_BYTES = 8 << 20
DEFAULT_MAX_ROWS = 20_000
_BUSY_TIMEOUT_S = 10.0

PayloadFactory = Callable[[int, int], bytes]
"""Builds a payload from (seq, dropped): the seq it will be stored under and the drop count to report."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    dropped INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO outbox_meta (key, value) VALUES ('next_seq', 1), ('dropped', 0), ('confirming', 0);
"""


class OutboxError(AgentError):
    """The outbox cannot be opened or written, or a payload does not fit in it."""


@dataclass(frozen=True)
class Entry:
    """A stored message: its seq, the drop count it carries, and its bytes."""

    seq: int
    dropped: int
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    rows: int
    bytes: int
    next_seq: int
    dropped_unreported: int


class Outbox:
    """A bounded SQLite queue. Thread-safe: the link's thread acks while another appends."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_bytes <= 0 or max_rows <= 0:
            raise OutboxError(f"outbox caps must be positive (max_bytes={max_bytes}, max_rows={max_rows})",
                              fix="set telemetry outbox_max_bytes and outbox_max_rows to positive numbers")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, one transaction per call.
            # timeout: wait for another process's write (``agent status`` reading) instead of failing.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=_BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the telemetry outbox {self.path}: {exc}",
                              fix="check that the state directory is writable and not full, or delete a corrupt outbox.sqlite") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM outbox_meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("UPDATE outbox_meta SET value = ? WHERE key = ?", (value, key))

    def append(self, payload: bytes | PayloadFactory) -> int:
        """Store a message under the next seq and return that seq.

        ``payload`` is bytes, or a factory called (inside the transaction) with the seq and
        the number of messages dropped since the last append, for payloads that must carry
        both (telemetry batches do). Rows over the caps are dropped oldest first, never the
        one just appended; a payload bigger than ``max_bytes`` on its own is refused.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    seq = self._meta("next_seq")
                    dropped = self._meta("dropped")
                    data = payload(seq, dropped) if callable(payload) else payload
                    if not isinstance(data, bytes):
                        raise OutboxError(f"an outbox payload must be bytes, got {type(data).__name__}")
                    if len(data) > self.max_bytes:
                        raise OutboxError(f"a {len(data)}-byte message does not fit a {self.max_bytes}-byte outbox",
                                          fix="raise the outbox size cap or send smaller batches")
                    self._db.execute("INSERT INTO outbox (seq, dropped, payload) VALUES (?, ?, ?)", (seq, dropped, data))
                    self._set_meta("next_seq", seq + 1)
                    self._set_meta("dropped", self._enforce_caps(seq))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {exc}",
                                  fix="check free space in the state directory") from exc
            return seq

    def _enforce_caps(self, newest: int) -> int:
        """Delete the oldest rows until under both caps; return the new unreported drop count."""
        rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        lost = 0
        while rows > self.max_rows or size > self.max_bytes:
            seq, carried, length = self._db.execute(
                "SELECT seq, dropped, LENGTH(payload) FROM outbox ORDER BY seq LIMIT 1").fetchone()
            if seq == newest:  # cannot happen with the size check in append; kept as a guard
                break
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            # The dropped row's carried count would be lost with it: pass it on.
            lost += 1 + int(carried)
            rows -= 1
            size -= int(length)
        return lost

    def pending(self, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` unacknowledged messages, oldest first."""
        with self._lock:
            try:
                cursor = self._db.execute("SELECT seq, dropped, payload FROM outbox ORDER BY seq LIMIT ?", (limit,))
                return [Entry(int(s), int(d), bytes(p)) for s, d, p in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the telemetry outbox {self.path}: {exc}") from exc

    def pending_after(self, seq: int, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` messages with a seq above ``seq``, oldest first (rows not sent yet)."""
        return self._select("SELECT seq, dropped, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                            (seq, limit))

    def entries(self, seqs: list[int]) -> list[Entry]:
        """The stored messages among ``seqs``, oldest first (a seq dropped by the cap is absent)."""
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        return self._select(f"SELECT seq, dropped, payload FROM outbox WHERE seq IN ({marks}) ORDER BY seq",
                            tuple(seqs))

    def _select(self, sql: str, params: tuple[int, ...]) -> list[Entry]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                return [Entry(int(s), int(d), bytes(p)) for s, d, p in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the telemetry outbox {self.path}: {exc}") from exc

    def ack_many(self, seqs: list[int]) -> int:
        """Forget the messages ``seqs`` (the server confirmed storing them), in one transaction;
        how many were stored."""
        if not seqs:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")  # one fsync for the lot, not one a row
                try:
                    cursor = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {exc}") from exc
            return max(cursor.rowcount, 0)

    @property
    def confirming(self) -> bool:
        """Whether rows wait for the server's confirmation, not just the broker's PUBACK."""
        with self._lock:
            return bool(self._meta("confirming"))

    def set_confirming(self) -> None:
        """Persist that this server confirms telemetry: kept across restarts, never turned off."""
        with self._lock:
            try:
                self._set_meta("confirming", 1)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {exc}") from exc

    def ack(self, seq: int) -> bool:
        """Forget the message ``seq`` now that the broker has it; False if it was not stored
        (already acked, or dropped by the cap while in flight)."""
        with self._lock:
            try:
                cursor = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write the telemetry outbox {self.path}: {exc}") from exc
            return cursor.rowcount > 0

    def stats(self) -> OutboxStats:
        with self._lock:
            rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
            return OutboxStats(int(rows), int(size), self._meta("next_seq"), self._meta("dropped"))
