"""Batch writes that lose only the rows the database refuses: split the batch and try again.

The writer threads (telemetry ingest, presence) store up to a thousand messages from many
devices in one transaction. Every message is checked before it is queued
(``fleet_server.telemetry.validation``), but if the database still refuses one row, the whole
transaction fails; losing the other 999 messages, already acknowledged to the broker, is what
one device must never be able to do to the fleet. ``write_isolating`` tries the batch, and on a
failure that names the rows (a data error, an encoding error) splits it in two and tries each
half, down to single rows: a bad row costs about 2·log2(n) extra transactions, and only it is
dropped. The order of the rows is kept (the first half is written before the second).

A failure that says nothing about the rows (``is_transient``: the database is unreachable,
locked, or aborted us for a deadlock) is raised at once instead: splitting would only repeat
it 2n times. What the caller does then (drop the batch and log) is the caller's.

Pure control flow around a ``write`` callable: no database, thread or clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write says nothing about its rows (connection, lock, deadlock, timeout)."""
    if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def write_isolating(rows: Sequence[T], write: Callable[[Sequence[T]], None], *,
                    transient: Callable[[BaseException], bool] = is_transient) -> list[tuple[T, Exception]]:
    """Write ``rows`` with ``write`` (one transaction per call); return the rows refused alone, with why.

    ``write`` must leave nothing behind when it raises (a rolled-back transaction), so that a
    half can be written again. A transient failure propagates.
    """
    if not rows:
        return []
    try:
        write(rows)
    except Exception as exc:
        if transient(exc):
            raise
        if len(rows) == 1:
            return [(rows[0], exc)]
        middle = len(rows) // 2
        return (write_isolating(rows[:middle], write, transient=transient)
                + write_isolating(rows[middle:], write, transient=transient))
    return []
