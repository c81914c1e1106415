"""Batch uploads for a model with named columns on the server (issue 12): CSV with a header
(stdlib csv, no pandas in the server extra) and Parquet (pyarrow, when installed) become records
for the shared parser; the agent's batch reader and the server answer a file alike; every limit
is applied before the work it guards."""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.batch import predict_file
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import Bundle, read_bundle
from edgefleet.profiles import load_profile
from fleet_server.registry.predict import PredictInputError, Predictor, read_feeds
from tests.support.column_model import column_labels, column_probabilities, make_column_bundle

SIZES = np.random.default_rng(8).normal(size=40).round(4).tolist()
COLORS = ["red", "blue", "green", "blue, or so"] * 10  # unseen ones and a quoted comma included


def column_bundle() -> Bundle:
    path = Path(tempfile.mkdtemp(prefix="edgefleet-upload-columns-")) / "shapes.tar.gz"
    path.write_bytes(make_column_bundle())
    return read_bundle(path)


BUNDLE = column_bundle()
INPUTS = BUNDLE.manifest.inputs


class _OneBundle:
    """The registry's bundle cache holding one bundle (the seam Predictor reads bundles through)."""

    def latest(self, name: str) -> str:
        return "1.0.0"

    def get(self, name: str, version: str) -> Bundle:
        return BUNDLE


def csv_bytes(rows: list[list[object]] | None = None, header: tuple[str, ...] = ("color", "id", "size")) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows if rows is not None else [[c, i, s] for i, (s, c) in enumerate(zip(SIZES, COLORS, strict=True))])
    return text.getvalue().encode()


def parquet_bytes(**columns: list[object]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(columns or {"size": SIZES, "color": COLORS}), out)
    return out.getvalue()


@pytest.mark.parametrize(("name", "data"), [("rows.csv", csv_bytes()), ("rows.parquet", parquet_bytes()),
                                            ("upload", parquet_bytes())])  # Parquet known by its magic too
def test_an_upload_of_named_columns_is_answered_like_records(name: str, data: bytes) -> None:
    predictor = Predictor(_OneBundle())  # type: ignore[arg-type]
    feeds = read_feeds(io.BytesIO(data), name, INPUTS)
    assert feeds["color"].dtype == object and feeds["color"][:, 0].tolist() == COLORS
    result = predictor.predict("shapes", "1.0.0", feeds)
    assert result.predictions == column_labels(SIZES, COLORS)
    assert result.probabilities is not None
    np.testing.assert_allclose(result.probabilities, column_probabilities(SIZES, COLORS), atol=1e-6)
    assert result.to_csv().splitlines()[0] == "prediction,p_small,p_big"


def test_the_agent_and_the_server_answer_the_same_file_alike(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(csv_bytes())
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(BUNDLE)
    session = load_session(slot, load_profile("generic-x86_64"))
    try:
        predict_file(session, source, tmp_path / "agent.csv", progress=False)
    finally:
        session.close()
    server = Predictor(_OneBundle()).predict("shapes", "1.0.0", read_feeds(source.read_bytes(), "rows.csv", INPUTS))  # type: ignore[arg-type]
    agent_rows = (tmp_path / "agent.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in agent_rows] == server.predictions


@pytest.mark.parametrize(("data", "status", "words"), [
    (csv_bytes([["red", 1, "abc"]]), 422, "rows.csv: data row 1, column 'size' is 'abc', not a number"),
    (csv_bytes([["red", 1, 0.5], ["", 2, 0.5]]), 422, "rows.csv: data row 2, column 'color' is empty"),
    (csv_bytes([["red", 1, "inf"]]), 422, "rows.csv: instances[0].size is infinity"),
    (csv_bytes([["red", 1]]), 422, "rows.csv: data row 1 has 2 cells, the header names 3"),
    (csv_bytes([["red", 0.5]], header=("color", "width")), 422, "the header lacks column(s) 'size'"),
    (csv_bytes([]), 422, "rows.csv: the request holds no rows"),
    (b"", 422, "rows.csv is empty"),
    (csv_bytes([["red", i, 0.5] for i in range(11)]), 413, "rows.csv holds more than 10 rows"),
    (csv_bytes([["x" * 600, 1, 0.5], ["y" * 600, 2, 0.5]]), 413, "holds more than 1024 bytes of values"),
])
def test_a_bad_csv_upload_names_the_row_and_column(data: bytes, status: int, words: str) -> None:
    with pytest.raises(PredictInputError) as caught:
        read_feeds(data, "rows.csv", INPUTS, max_rows=10, max_bytes=1024)
    assert words in caught.value.message and caught.value.status_code == status and caught.value.fix


def test_parquet_limits_are_checked_from_the_footer_and_types_by_the_parser() -> None:
    many = parquet_bytes(size=[0.5] * 11, color=["red"] * 11)
    with pytest.raises(PredictInputError, match="holds 11 rows, over the limit of 10") as caught:
        read_feeds(many, "rows.parquet", INPUTS, max_rows=10)
    assert caught.value.status_code == 413
    big = parquet_bytes(size=[0.5] * 4, color=["z" * 2000] * 4)
    with pytest.raises(PredictInputError, match="bytes of values uncompressed, over the limit of 4096"):
        read_feeds(big, "rows.parquet", INPUTS, max_bytes=4096)
    wrong = parquet_bytes(size=[str(s) for s in SIZES], color=COLORS)
    with pytest.raises(PredictInputError, match="instances\\[0\\].size is str '.*', not a number"):
        read_feeds(wrong, "rows.parquet", INPUTS)
    with pytest.raises(PredictInputError, match="lacks column\\(s\\) 'color'"):
        read_feeds(parquet_bytes(size=SIZES), "rows.parquet", INPUTS)
    with pytest.raises(PredictInputError, match="is not a readable Parquet file"):
        read_feeds(b"PAR1 not really", "rows.parquet", INPUTS)


def test_parquet_without_pyarrow_on_the_server_says_what_to_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # the server extra does not install pyarrow
    with pytest.raises(PredictInputError, match="reading Parquet needs pyarrow") as caught:
        read_feeds(parquet_bytes(), "rows.parquet", INPUTS)
    assert "CSV" in (caught.value.fix or "")


def test_a_model_with_image_or_tensor_inputs_is_refused_in_words() -> None:
    from edgefleet.manifest import TensorSpec

    tensors = (TensorSpec("window", "float32", (-1, 16000)), TensorSpec("meta", "float32", (-1, 4)))
    with pytest.raises(PredictInputError, match="rows.csv: this model takes tensors .* which only an .npy or .npz upload"):
        read_feeds(b"a,b\n", "rows.csv", tensors)
