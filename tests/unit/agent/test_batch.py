"""Batch prediction over files with a real session: every input and output format, chunking,
and errors that point at the bad row."""

from __future__ import annotations

import json
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
from edgefleet.profiles import Profile
from tests.unit.agent.models import FEATURES, LABELS, BundleMaker, linear_probabilities

ROWS = np.random.default_rng(11).normal(size=(300, 4)).astype(np.float32)
EXPECTED = [LABELS[i] for i in linear_probabilities(ROWS, 0).argmax(axis=1)]


@pytest.fixture
def session(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> Iterator[ModelSession]:
    s = load_session(ModelStore(state).stage(read_bundle(linear_bundle())), profile)
    yield s
    s.close()


def write_input(path: Path, rows: np.ndarray, header: bool = True) -> Path:
    if path.suffix == ".npy":
        np.save(path, rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({name: rows[:, i] for i, name in enumerate(FEATURES)}), path, row_group_size=64)
    else:
        lines = ([",".join(FEATURES)] if header else []) + [",".join(f"{v:.9g}" for v in row) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


def read_predictions(path: Path) -> list[str]:
    if path.suffix == ".npy":
        return [str(v) for v in np.load(path).tolist()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [str(v) for v in pq.read_table(path).column("prediction").to_pylist()]
    if path.suffix == ".jsonl":
        return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


@pytest.mark.parametrize("source", ["in.csv", "in.npy", "in.parquet"])
@pytest.mark.parametrize("target", ["out.csv", "out.npy", "out.parquet", "out.jsonl"])
def test_every_format_pair_gives_the_models_predictions(session: ModelSession, tmp_path: Path, source: str,
                                                        target: str) -> None:
    summary = predict_file(session, write_input(tmp_path / source, ROWS), tmp_path / target, chunk_rows=64,
                           progress=False)
    assert summary.rows == 300 and summary.version == "1.0.0"
    assert read_predictions(tmp_path / target) == EXPECTED


def test_csv_columns_are_matched_by_name_and_extra_ones_skipped(session: ModelSession, tmp_path: Path) -> None:
    header = ["id", *reversed(FEATURES), "label"]
    lines = [",".join(header)] + [",".join(["7", *(f"{v:.9g}" for v in reversed(row)), "x"]) for row in ROWS]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    predict_file(session, tmp_path / "in.csv", tmp_path / "o.csv", progress=False)
    assert read_predictions(tmp_path / "o.csv") == EXPECTED


def test_csv_without_header_takes_columns_in_order(session: ModelSession, tmp_path: Path) -> None:
    predict_file(session, write_input(tmp_path / "in.csv", ROWS, header=False), tmp_path / "o.csv", progress=False)
    assert read_predictions(tmp_path / "o.csv") == EXPECTED


@pytest.mark.parametrize(("text", "words"), [
    ("sepal_length,sepal_width,petal_length\n1,2,3\n", "lacks feature(s) petal_width"),
    ("1,2,3,4\n1,2,3\n", "data row 2 has 3 columns, the first row has 4"),
    ("1,2,3,4\n1,2,,4\n", "row 2, column 3 is ''"),
    ("1,2,3,4\n1,2,nan,4\n", "NaN"),
    ("", "is empty"),
])
def test_bad_csv_is_named_and_leaves_no_output(session: ModelSession, tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "in.csv").write_text(text)
    with pytest.raises(BatchInputError) as caught:
        predict_file(session, tmp_path / "in.csv", tmp_path / "out.csv", progress=False)
    assert words in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "state"]  # no output, no temp file


def test_unsupported_extensions_and_missing_input(session: ModelSession, tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="unsupported extension .txt"):
        predict_file(session, tmp_path / "in.txt", tmp_path / "out.csv")
    with pytest.raises(BatchInputError, match="does not exist"):
        predict_file(session, tmp_path / "in.csv", tmp_path / "out.csv")
