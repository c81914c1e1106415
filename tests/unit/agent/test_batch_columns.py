"""Batch files for a model with named column inputs (issue 12): CSV with strings (stdlib csv,
no pandas on the device) and Parquet, by column name, through a real session; NPY and models
with other inputs refused with a message that says why."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.batch import predict_file
from agent.errors import BatchInputError
from agent.runtime import ModelSession, load_session
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.manifest import TensorSpec
from edgefleet.profiles import Profile
from tests.support.column_model import column_labels, column_probabilities, make_column_bundle

SIZES = np.random.default_rng(3).normal(size=50).round(4).tolist()
COLORS = ["blue", "red", "green, light", "red\nish", "blue"] * 10  # unseen ones, a comma and a newline included
EXPECTED = column_labels(SIZES, COLORS)


@pytest.fixture
def session(state: StateDir, profile: Profile, tmp_path: Path) -> Iterator[ModelSession]:
    path = tmp_path / "shapes.tar.gz"
    path.write_bytes(make_column_bundle())
    s = load_session(ModelStore(state).stage(read_bundle(path)), profile)
    yield s
    s.close()


def write_csv(path: Path, header: str = "id,color,size", rows: list[str] | None = None) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        if rows is None:  # columns in another order than the model's, and an id it does not take
            writer.writerows([i, c, s] for i, (s, c) in enumerate(zip(SIZES, COLORS, strict=True)))
    if rows is not None:
        path.write_text(path.read_text() + "".join(r + "\n" for r in rows))
    return path


def write_parquet(path: Path, **columns: list[object]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns or {"color": COLORS, "size": SIZES, "id": list(range(50))}), path, row_group_size=16)
    return path


@pytest.mark.parametrize("target", ["out.csv", "out.jsonl", "out.npy", "out.parquet"])
def test_csv_with_strings_is_read_by_column_name(session: ModelSession, tmp_path: Path, target: str) -> None:
    summary = predict_file(session, write_csv(tmp_path / "in.csv"), tmp_path / target, chunk_rows=7, progress=False)
    assert summary.rows == 50
    out = tmp_path / target
    if target == "out.jsonl":
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prediction"] for r in lines] == EXPECTED
        np.testing.assert_allclose([r["probabilities"] for r in lines], column_probabilities(SIZES, COLORS), atol=1e-6)
    elif target == "out.npy":
        assert np.load(out).tolist() == EXPECTED
    elif target == "out.parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(out).column("prediction").to_pylist() == EXPECTED
    else:
        assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == EXPECTED


def test_parquet_is_read_by_column_name(session: ModelSession, tmp_path: Path) -> None:
    summary = predict_file(session, write_parquet(tmp_path / "in.parquet"), tmp_path / "out.jsonl", chunk_rows=9,
                           progress=False)
    assert summary.rows == 50
    assert [json.loads(line)["prediction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == EXPECTED


@pytest.mark.parametrize(("rows", "header", "words"), [
    (["blue,1.0", "red,abc"], "color,size", "CSV data row 2, column 'size' is 'abc', not a number"),
    (["blue,1.0", ",2.0"], "color,size", "CSV data row 2, column 'color' is empty"),
    (["blue,"], "color,size", "CSV data row 1, column 'size' is empty"),
    (["blue,1.0", "red,inf"], "color,size", "data rows 1-2: instances[1].size is infinity"),
    (["blue,1.0,x"], "color,size", "CSV data row 1 has 3 columns, the header names 2"),
    (["blue"], "color", "the CSV header lacks column(s) 'size', which the model takes by name"),
    (["1.0,2.0"], "1.0,2.0", "the CSV header lacks column(s) 'size', 'color'"),
])
def test_a_bad_csv_names_the_row_and_column_and_leaves_no_output(
        session: ModelSession, tmp_path: Path, rows: list[str], header: str, words: str) -> None:
    with pytest.raises(BatchInputError, match=re.escape(words)) as caught:
        predict_file(session, write_csv(tmp_path / "in.csv", header, rows), tmp_path / "out.csv", progress=False)
    assert caught.value.fix
    assert not list(tmp_path.glob("*out.csv*"))


def test_parquet_of_the_wrong_types_or_columns_is_refused(session: ModelSession, tmp_path: Path) -> None:
    wrong = write_parquet(tmp_path / "wrong.parquet", color=COLORS, size=[str(s) for s in SIZES])
    with pytest.raises(BatchInputError, match="column 'size' holds string values, the model takes a number there"):
        predict_file(session, wrong, tmp_path / "out.csv", progress=False)
    missing = write_parquet(tmp_path / "missing.parquet", size=SIZES)
    with pytest.raises(BatchInputError, match="lacks column\\(s\\) 'color'"):
        predict_file(session, missing, tmp_path / "out.csv", progress=False)
    numbers = write_parquet(tmp_path / "ints.parquet", color=COLORS, size=list(range(50)))  # ints take a float column
    assert predict_file(session, numbers, tmp_path / "out.csv", progress=False).rows == 50


def test_parquet_without_pyarrow_says_how_to_get_it(session: ModelSession, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "in.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an agent install without pyarrow has
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BatchInputError, match="reading Parquet files needs pyarrow") as caught:
        predict_file(session, path, tmp_path / "out.csv", progress=False)
    assert "use CSV" in (caught.value.fix or "")


def test_npy_is_refused_for_named_columns(session: ModelSession, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.ones((3, 2), np.float32))
    with pytest.raises(BatchInputError, match="an .npy array has no column names") as caught:
        predict_file(session, tmp_path / "in.npy", tmp_path / "out.csv", progress=False)
    assert "header row, or a Parquet file" in (caught.value.fix or "")


@dataclasses.dataclass
class _ManifestOnly:
    """A session seam holding only a manifest: the refusal comes before anything runs."""

    manifest: object


def test_a_model_with_other_inputs_is_refused_in_words_not_with_a_manifest_error(
        session: ModelSession, tmp_path: Path) -> None:
    tensors = (TensorSpec("window", "float32", (-1, 16000)), TensorSpec("meta", "float32", (-1, 4)))
    manifest = dataclasses.replace(session.manifest, inputs=tensors)
    # Tensor models read .npy/.npz now (tests/unit/agent/test_batch_tensors.py); a CSV is refused in words.
    with pytest.raises(BatchInputError, match=r"takes tensors \(window, meta\), which a \.csv file does not hold"
                       ) as caught:
        predict_file(_ManifestOnly(manifest), write_csv(tmp_path / "in.csv"), tmp_path / "out.csv",  # type: ignore[arg-type]
                     progress=False)
    assert caught.value.fix
