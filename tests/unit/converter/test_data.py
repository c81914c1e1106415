"""Reading calibration/validation data: formats, headers, label columns and shape errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.data import load_dataset
from converter.errors import DataError, DataShapeError
from edgefleet.manifest import TensorSpec


def test_csv_with_header_takes_out_the_named_label_column(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    path.write_text("a,label,b\n1.5,cat,2\n3,dog,4.25\n")
    data = load_dataset(path, labels_column="label")
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.features, np.array([[1.5, 2], [3, 4.25]], np.float32))
    assert list(data.labels) == ["cat", "dog"]  # type: ignore[arg-type]


def test_headerless_csv_takes_the_label_column_by_index(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    path.write_text("1,2,0\n3,4,1\n")
    data = load_dataset(path, labels_column="2")
    assert data.feature_names is None
    assert data.features.shape == (2, 2)
    assert data.labels is not None and data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1]


def test_a_file_without_the_label_column_is_all_features(tmp_path: Path) -> None:
    path = tmp_path / "calib.csv"
    path.write_text("a,b\n1,2\n")
    data = load_dataset(path, labels_column="label")
    assert data.labels is None and data.width == 2


def test_npy_npz_and_parquet(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "x.npy", rows)
    assert load_dataset(tmp_path / "x.npy").features.shape == (4, 3)
    np.savez(tmp_path / "xy.npz", X=rows, y=np.array([0, 1, 0, 1]))
    npz = load_dataset(tmp_path / "xy.npz")
    assert npz.width == 3 and npz.labels is not None and npz.labels.tolist() == [0, 1, 0, 1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"f0": [1.0, 2.0], "f1": [3.0, 4.0], "label": [1, 0]}), tmp_path / "d.parquet")
    parquet = load_dataset(tmp_path / "d.parquet", labels_column="label")
    assert parquet.feature_names == ("f0", "f1") and parquet.labels is not None and parquet.labels.tolist() == [1, 0]


def test_wrong_number_of_columns_names_both_widths_and_the_label_hint(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    path.write_text("a,b,c\n1,2,3\n")
    data = load_dataset(path)
    with pytest.raises(DataShapeError, match=r"has 3 feature columns but the model takes 2.*--labels"):
        data.check_width(2)


def test_ragged_csv_is_a_shape_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1,2\n3\n")
    with pytest.raises(DataShapeError, match="row 2 has 1 columns"):
        load_dataset(path)


def test_text_in_a_feature_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="not a number"):
        load_dataset(path)


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown type"):
        load_dataset(tmp_path / "data.xlsx")


# -- named columns (a model fitted on a DataFrame) ------------------------------------------------
def _column_specs() -> tuple[TensorSpec, ...]:
    return (TensorSpec("zip", "string", (-1, 1), kind="column", categories=("01234",)),
            TensorSpec("x", "float32", (-1, 1), kind="column"))


def test_columns_are_read_by_name_with_strings_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    path.write_text("label,x,zip,unused\n1,1.5,01234,q\n0,2,99,r\n")
    data = load_dataset(path, labels_column="label", columns=_column_specs())
    assert data.columns is not None and list(data.columns) == ["zip", "x"]
    assert data.columns["zip"].dtype == object and data.columns["zip"].tolist() == [["01234"], ["99"]]
    assert data.columns["x"].dtype == np.float32 and data.columns["x"].tolist() == [[1.5], [2.0]]
    assert data.feature_names == ("x",) and data.features.tolist() == [[1.5], [2.0]]  # the numeric columns
    assert data.labels is not None and data.labels.tolist() == [1, 0]
    assert data.batch is not data.columns and list(data.batch) == ["zip", "x"]  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "words"), [
    ("x,zip\n1,a\n2,\n", "column 'zip' row 2 is empty or not text"),
    ("x,zip\n1,a\nnope,b\n", "column 'x' holds a value that is not a number"),
    ("x\n1\n", "has no column(s) 'zip'"),
    ("x,zip\n", "holds no rows"),
])
def test_bad_column_data_names_the_column(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "val.csv"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        load_dataset(path, columns=_column_specs())
    assert words in caught.value.message


def test_a_column_model_needs_named_columns(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match="takes named columns, which a .npy file does not have"):
        load_dataset(tmp_path / "x.npy", columns=_column_specs())
