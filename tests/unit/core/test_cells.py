"""The one rule for "is this CSV cell a number", shared by the converter, the agent and the server."""

from __future__ import annotations

import pytest

from edgefleet.cells import is_number


@pytest.mark.parametrize("cell", ["0", "-1.5", " 2 ", "1e-3", "1_000", "nan", "-inf", "+3."])
def test_reads_what_float_reads_as_a_number(cell: str) -> None:
    assert is_number(cell)


@pytest.mark.parametrize("cell", ["", "   ", "label", "f1", "1,5", "0x10", "1..2", "true"])
def test_names_and_blanks_are_not_numbers(cell: str) -> None:
    assert not is_number(cell)
