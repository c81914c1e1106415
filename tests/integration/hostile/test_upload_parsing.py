"""The server's upload reader stops at each limit: how far it read into a refused file shows it
never parsed the file whole (issue 14). test_upload_memory.py measures the same in a real server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from numpy.lib import format as npy_format

from edgefleet.manifest import TensorSpec
from fleet_server.registry.predict import MAX_CSV_LINE_BYTES, PredictInputError, read_table
from tests.integration.hostile.bombs import csv_over_the_row_limit, forged_npy

SPEC = TensorSpec("x", "float32", (-1, 3), feature_names=("a", "b", "c"))
ANY_WIDTH = TensorSpec("x", "float32", (-1, -1))


def _refusal(stream: io.BytesIO, name: str, spec: TensorSpec = SPEC, **limits: int) -> PredictInputError:
    with pytest.raises(PredictInputError) as caught:
        read_table(stream, name, spec, **limits)
    return caught.value


def test_csv_is_refused_at_the_row_after_the_limit_not_after_reading_it_all() -> None:
    data = csv_over_the_row_limit()  # 350,000 rows, about 4 MiB
    stream = io.BytesIO(data)
    refused = _refusal(stream, "rows.csv")
    assert refused.status_code == 413 and "rows.csv holds more than 10000 rows" in refused.message
    assert stream.tell() < 10_001 * len(b"1.5,1.5,1.5\n") + 1, "read past the row that broke the limit"
    assert read_table(io.BytesIO(csv_over_the_row_limit(rows=10_000)), "ok.csv", SPEC).shape == (10_000, 3)


def test_a_header_is_judged_once_and_columns_follow_the_feature_order() -> None:
    assert read_table(io.BytesIO(b"c,a,b,a\n3,0,2,1\n"), "x.csv", SPEC).tolist() == [[1, 2, 3]]  # the last 'a' wins
    # a column the model does not take is skipped (as the agent does), so 'c' is what is missing
    assert "instances[0] is missing feature(s) 'c'" in _refusal(io.BytesIO(b"a,b,d\n1,2,3\n"), "x.csv").message
    assert "data row 2 has 2 cells, the header names 3" in _refusal(io.BytesIO(b"a,b,c\n1,2,3\n1,2\n"), "x.csv").message


def test_a_line_over_the_limit_is_refused_before_it_is_split() -> None:
    line = b"1," * (MAX_CSV_LINE_BYTES // 2) + b"1\n"
    stream = io.BytesIO(line + b"1,2,3\n")
    refused = _refusal(stream, "wide.csv", ANY_WIDTH)
    assert refused.status_code == 413 and f"line 1 is longer than {MAX_CSV_LINE_BYTES} bytes" in refused.message
    assert stream.tell() <= MAX_CSV_LINE_BYTES + 1


def test_values_past_the_byte_limit_are_refused_as_they_are_read() -> None:
    refused = _refusal(io.BytesIO(b"1,2,3\n" * 100), "x.csv", max_bytes=120)
    assert refused.status_code == 413 and "holds more than 30 values" in refused.message


def test_npy_claims_are_checked_before_a_value_is_read() -> None:
    forged = _refusal(io.BytesIO(forged_npy((2**40, 2**40))), "f.npy")
    assert forged.status_code == 422
    assert "its header claims shape (1099511627776, 1099511627776) of float64" in forged.message
    honest = forged_npy((4, 3))[:-200] + np.ones((4, 3)).tobytes()
    assert read_table(io.BytesIO(honest), "ok.npy", SPEC).tolist() == [[1, 1, 1]] * 4
    too_big = _refusal(io.BytesIO(honest), "big.npy", max_bytes=64)
    assert too_big.status_code == 413 and "claims 96 bytes of values" in too_big.message


def test_a_zero_size_dtype_is_unreadable_not_a_crash() -> None:
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "|V0", "fortran_order": False, "shape": (2**70, 3)})
    refused = _refusal(io.BytesIO(buffer.getvalue()), "v.npy")
    assert refused.status_code == 422 and "has no size" in refused.message
