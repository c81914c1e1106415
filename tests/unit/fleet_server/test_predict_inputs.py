"""The server's predict input: the shared parser's rules (edgefleet.inputs), answered as 422/413,
uploads read through the same parser, and the same matrix or refusal as the agent for every body."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from agent.runtime import load_session
from agent.serving import Served, ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.errors import InputError
from edgefleet.manifest import TensorSpec
from edgefleet.profiles import load_profile
from fleet_server.registry.predict import PredictInputError, Prediction, parse_inputs, read_table
from tests.unit.agent.models import FEATURES, make_linear_bundle

SPEC = TensorSpec("x", "float32", (-1, 3), feature_names=("a", "b", "c"))
NAN_SPEC = TensorSpec("x", "float32", (-1, 2), allow_nan=True)


def test_rows_one_row_and_named_features_give_the_same_matrix() -> None:
    rows = parse_inputs({"inputs": [[1, 2.5, 3], [4, 5, 6]]}, SPEC)
    assert rows.dtype == np.float32 and rows.tolist() == [[1, 2.5, 3], [4, 5, 6]]
    assert parse_inputs({"inputs": [1, 2.5, 3]}, SPEC).tolist() == [[1, 2.5, 3]]
    named = parse_inputs({"instances": [{"c": 3, "a": 1, "b": 2.5}, {"a": 4, "b": 5, "c": 6}]}, SPEC)
    assert named.tolist() == rows.tolist()


def test_a_bare_list_of_rows_is_taken_as_inputs_like_the_agent_does() -> None:
    assert parse_inputs([[1, 2, 3]], SPEC).tolist() == [[1, 2, 3]]


def test_null_is_nan_only_where_the_spec_allows_it() -> None:
    assert math.isnan(parse_inputs({"inputs": [[None, 1]]}, NAN_SPEC)[0, 0])
    with pytest.raises(PredictInputError, match="not a number"):
        parse_inputs({"inputs": [[None, 1, 2]]}, SPEC)


@pytest.mark.parametrize("payload, words", [
    ({"inputs": [[1, 2, 3]], "extra": 1}, "unknown field(s) 'extra'"),
    ({"rows": [[1, 2, 3]]}, "unknown field(s) 'rows'"),
    ({}, "no 'inputs' and no 'instances': the rows to predict are missing"),
    ({"inputs": [[1, 2, 3]], "instances": []}, "both 'inputs' and 'instances'"),
    ("1,2,3", "not an object"),
    ({"inputs": "1,2,3"}, "'inputs' must be a list"),
    ({"inputs": [[1, 2]]}, "have 2 values per row but model input 'x' takes 3"),
    ({"inputs": [[1, "2", 3]]}, "inputs[0][1] is str '2', not a number"),
    ({"inputs": [[1, False, 3]]}, "inputs[0][1] is bool False, not a number"),
    ({"inputs": [[1, float("inf"), 3]]}, "infinity"),
    ({"inputs": [[1, 1e300, 3]]}, "infinity"),
    ({"inputs": [[1, 10 ** 400, 3]]}, "too large for float32"),
    ({"instances": [{"a": 1, "b": 2, "c": 10 ** 400}]}, "too large for float32"),
    ({"instances": [{"a": 1, "b": 2, "d": 3}]}, "unknown feature(s) 'd'"),
    ({"inputs": [[1, 2, 3], 4]}, "inputs[1] is int, not a row"),
    ({"inputs": []}, "no rows"),
])
def test_bad_inputs_are_refused_with_a_reason_as_422(payload: object, words: str) -> None:
    with pytest.raises(PredictInputError) as caught:
        parse_inputs(payload, SPEC)
    assert words in caught.value.message and caught.value.fix
    assert caught.value.status_code == 422


def test_too_many_rows_is_413() -> None:
    with pytest.raises(PredictInputError) as caught:
        parse_inputs({"inputs": [[1, 2, 3]] * 11}, SPEC, max_rows=10)
    assert caught.value.status_code == 413 and "11 rows" in caught.value.message


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_csv_with_or_without_header_and_npy_read_as_rows() -> None:
    expected = [[1, 2, 3], [4, 5, 6]]
    assert read_table(b"c,a,b\n3,1,2\n6,4,5\n", "x.csv", SPEC).tolist() == expected
    assert read_table(b"1,2,3\n4,5,6\n", "x.csv", SPEC).tolist() == expected
    assert read_table(_npy(np.asarray(expected, dtype=np.float64)), "x.npy", SPEC).tolist() == expected
    assert read_table(_npy(np.asarray(expected, dtype=np.float32, order="F")), "x.npy", SPEC).tolist() == expected
    assert math.isnan(read_table(b"1,\n", "x.csv", NAN_SPEC)[0, 1])  # an empty cell is a missing value


@pytest.mark.parametrize("data, filename, words, status", [
    (b"\x93NUMPYgarbage", "x.npy", "x.npy is not a readable .npy file", 422),
    (b"PK\x03\x04 an npz archive", "x.npy", "not a readable .npy", 422),
    (_npy(np.zeros((2, 3, 1))), "x.npy", "x.npy: input array has 3 dimensions", 422),
    (_npy(np.array([[True, False, True]])), "x.npy", "x.npy: input array has dtype bool, not numbers", 422),
    (_npy(np.zeros((2, 2))), "x.npy", "x.npy: inputs have 2 values per row", 422),
    (_npy(np.zeros((11, 3))), "x.npy", "x.npy: the request holds 11 rows", 413),
    (b"\n", "x.csv", "x.csv is empty", 422),
    (b"\xff\xfe", "x.csv", "not UTF-8 CSV", 422),
    (b"a,b,c\n", "x.csv", "x.csv: the request holds no rows", 422),
    (b"a,b,c\n1,2,3,4\n", "x.csv", "data row 1 has 4 cells, the header names 3", 422),
    (b"a,b,d\n1,2,3\n", "x.csv", "x.csv: instances[0] is missing feature(s) 'c'", 422),  # 'd' is skipped, as the agent does
    (b"1,2,3\n1,x,3\n", "x.csv", "data row 2, column 2 is 'x', not a number", 422),
    (b"1,2,3\n1,2\n", "x.csv", "x.csv: inputs[1] has 2 values", 422),
    (b"1,,3\n", "x.csv", "NaN (or null)", 422),
    (b"1,inf,3\n", "x.csv", "infinity", 422),
])
def test_bad_uploads_are_refused_with_a_reason(data: bytes, filename: str, words: str, status: int) -> None:
    with pytest.raises(PredictInputError) as caught:
        read_table(data, filename, SPEC, max_rows=10)
    assert words in caught.value.message and caught.value.status_code == status


def test_a_forged_npy_header_allocates_nothing_it_claims() -> None:
    """np.load would allocate the header's shape before reading: a 100-byte upload must not ask for terabytes."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12, 3)})
    with pytest.raises(PredictInputError, match="not a readable .npy"):
        read_table(buffer.getvalue() + b"\0" * 24, "x.npy", SPEC)


def test_prediction_csv_has_one_probability_column_per_class() -> None:
    result = Prediction("m", "1.0.0", "r", ["cat", "dog"], [[0.9, 0.1], [0.2, 0.8]], ["cat", "dog"])
    assert result.to_csv() == "prediction,p_cat,p_dog\ncat,0.9,0.1\ndog,0.2,0.8\n"
    assert "probabilities" not in Prediction("m", "1.0.0", "r", [1.5], None, None).to_dict()


# ---- the same answers as the agent --------------------------------------------------------------

MAX_ROWS = 3
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[bool, ServingTable], list[Served]]]:
    """The agent's serving table (its API's entry for every predict), one for a strict input spec and
    one for a spec that allows NaN, each serving a real bundle; the list holds what each call served."""
    served: list[Served] = []
    tables: dict[bool, ServingTable] = {}
    for allow_nan in (False, True):
        state = StateDir(Path(tmp_path_factory.mktemp("agent")) / "state").ensure()
        slot = ModelStore(state).stage(read_bundle(make_linear_bundle(allow_nan=allow_nan)))
        tables[allow_nan] = ServingTable(max_rows=MAX_ROWS)
        tables[allow_nan].add_request_observer(served.append)
        tables[allow_nan].swap("iris", load_session(slot, load_profile("generic-x86_64")))
    yield tables, served
    for table in tables.values():
        session = table.get("iris")
        assert session is not None
        session.close()


@pytest.mark.parametrize(("payload", "allow_nan", "agent_status"), [
    pytest.param({"instances": [dict(zip(reversed(FEATURES), reversed(ROW), strict=True))]}, False, 200,
                 id="named instances"),
    pytest.param({"inputs": [ROW, ROW[::-1]]}, False, 200, id="rows"),
    pytest.param({"inputs": ROW}, False, 200, id="one row"),
    pytest.param([ROW], False, 200, id="bare list of rows"),
    pytest.param({"instances": [ROW]}, False, 200, id="rows under instances"),
    pytest.param({"inputs": [[5.1, None, 1.4, 0.2]]}, True, 200, id="null with allow_nan"),
    pytest.param({"inputs": [[5.1, None, 1.4, 0.2]]}, False, 400, id="null without allow_nan"),
    pytest.param({"inputs": [[5.1, True, 1.4, 0.2]]}, False, 400, id="bool"),
    pytest.param({"inputs": [[5.1, "3.5", 1.4, 0.2]]}, False, 400, id="string"),
    pytest.param({"inputs": [[5.1, math.inf, 1.4, 0.2]]}, True, 400, id="infinity"),
    pytest.param({"inputs": [[5.1, 3.5, 1.4]]}, False, 400, id="wrong width"),
    pytest.param({"instances": [{"sepal_length": 5.1}]}, False, 400, id="missing feature"),
    pytest.param({"inputs": [ROW], "extra": 1}, False, 400, id="unknown field"),
    pytest.param({"inputs": []}, False, 400, id="no rows"),
    pytest.param({"inputs": [ROW] * (MAX_ROWS + 1)}, False, 413, id="too many rows"),
])
def test_agent_and_server_give_the_same_matrix_and_the_same_refusals(
        agents: tuple[dict[bool, ServingTable], list[Served]], payload: Any, allow_nan: bool,
        agent_status: int) -> None:
    tables, served = agents
    session = tables[allow_nan].get("iris")
    assert session is not None
    agent: np.ndarray | tuple[int, str, str | None]
    server: np.ndarray | tuple[int, str, str | None]
    try:
        tables[allow_nan].predict("iris", payload)
        assert served[-1].matrix is not None
        agent = served[-1].matrix
    except InputError as exc:  # what the agent's API answers: exc.status, message and fix
        agent = (exc.status, exc.message, exc.fix)
    try:
        server = parse_inputs(payload, session.manifest.input, max_rows=MAX_ROWS)
    except PredictInputError as exc:  # what the server's API answers
        server = (exc.status_code, exc.message, exc.fix)

    if agent_status == 200:
        assert isinstance(agent, np.ndarray) and isinstance(server, np.ndarray), (agent, server)
        assert agent.dtype == server.dtype == np.float32
        np.testing.assert_array_equal(agent, server)  # NaN included: NaN equals NaN here
    else:
        assert isinstance(agent, tuple) and isinstance(server, tuple), (agent, server)
        assert agent[0] == agent_status
        assert server[0] == {400: 422, 413: 413}[agent_status]  # the server's status for a refused request
        assert agent[1:] == server[1:]  # the same reason and the same fix
