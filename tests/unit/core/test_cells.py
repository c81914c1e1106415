"""The one rule for "is this CSV cell a number", shared by the converter, the agent and the server."""

from __future__ import annotations

import pytest

from edgefleet.cells import column_value, is_number


@pytest.mark.parametrize("cell", ["0", "-1.5", " 2 ", "1e-3", "1_000", "nan", "-inf", "+3."])
def test_reads_what_float_reads_as_a_number(cell: str) -> None:
    assert is_number(cell)


@pytest.mark.parametrize("cell", ["", "   ", "label", "f1", "1,5", "0x10", "1..2", "true"])
def test_names_and_blanks_are_not_numbers(cell: str) -> None:
    assert not is_number(cell)


@pytest.mark.parametrize(("cell", "dtype", "value"), [
    ("east", "string", "east"), (" east ", "string", " east "), ("013", "string", "013"),
    ("1.5", "float32", 1.5), (" -2 ", "float32", -2.0), ("nan", "float32", float("inf") * 0),
    ("7", "int64", 7), ("-7", "int64", -7), ("TRUE", "bool", True), ("0", "bool", False),
])
def test_a_column_cell_becomes_the_json_value_of_its_dtype(cell: str, dtype: str, value: object) -> None:
    got = column_value(cell, dtype)
    assert got == value or (value != value and got != got)  # NaN equals nothing, itself included
    assert type(got) is type(value)


@pytest.mark.parametrize(("cell", "dtype", "reason"), [
    ("east", "float32", "is 'east', not a number"), ("1.5", "int64", "is '1.5', not an integer"),
    ("yes", "bool", "is 'yes', not true or false"), ("", "string", "is empty"), ("  ", "float32", "is empty"),
    ("", "int64", "is empty"), ("", "bool", "is empty"),
])
def test_a_column_cell_of_the_wrong_kind_says_what_it_is(cell: str, dtype: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{reason}$"):
        column_value(cell, dtype)


def test_an_empty_cell_is_missing_only_where_the_column_allows_nan() -> None:
    assert column_value(" ", "float32", allow_nan=True) is None
    with pytest.raises(ValueError, match="is empty"):
        column_value("", "string", allow_nan=True)
