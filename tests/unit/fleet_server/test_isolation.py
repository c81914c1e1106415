"""write_isolating: a failed batch write costs only the rows the database refuses alone (issue 14)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import DataError, OperationalError

from fleet_server.isolation import is_transient, write_isolating


class Table:
    """A fake transactional write: all of a call's rows, or none when one of them is bad."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.rows: list[int] = []
        self.calls = 0

    def write(self, rows: Sequence[int]) -> None:
        self.calls += 1
        refused = [r for r in rows if r in self.bad]
        if refused:
            raise DataError("INSERT", {"row": refused[0]}, ValueError(f"row {refused[0]} out of range"))
        self.rows.extend(rows)


@given(rows=st.lists(st.integers(0, 10_000), unique=True, max_size=300), data=st.data())
def test_only_the_refused_rows_are_dropped_and_the_rest_keep_their_order(rows: list[int], data: st.DataObject) -> None:
    bad = set(data.draw(st.lists(st.sampled_from(rows), max_size=5))) if rows else set()
    table = Table(bad)
    dropped = write_isolating(rows, table.write)
    assert table.rows == [r for r in rows if r not in bad]
    assert [r for r, _ in dropped] == [r for r in rows if r in bad]
    assert all(isinstance(error, DataError) for _, error in dropped)
    # One bad row costs about 2*log2(n) extra writes, never a write per row.
    if len(bad) == 1:
        assert table.calls <= 2 * max(1, len(rows)).bit_length() + 1


def test_a_good_batch_is_one_write() -> None:
    table = Table(set())
    assert write_isolating(list(range(1000)), table.write) == [] and table.calls == 1


def test_a_transient_failure_is_raised_at_once_not_split() -> None:
    calls = []

    def unreachable(rows: Sequence[int]) -> None:
        calls.append(len(rows))
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    with pytest.raises(OperationalError):
        write_isolating(list(range(64)), unreachable)
    assert calls == [64]


@pytest.mark.parametrize("error, transient", [
    (OperationalError("x", {}, Exception("database is locked")), True),
    (ConnectionError("reset"), True),
    (DataError("x", {}, Exception("bigint out of range")), False),
    (ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
    (OverflowError("Python int too large to convert to SQLite INTEGER"), False),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
])
def test_what_counts_as_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
