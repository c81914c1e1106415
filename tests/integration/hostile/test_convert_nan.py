"""`edgefleet convert --validation` with NaN rows: one error line naming the row and the fix,
never a traceback (issue 14; scikit-learn's "Input X contains NaN" used to escape)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.integration.hostile.memory import REPO


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    path = tmp_path_factory.mktemp("model") / "m.joblib"
    joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), path)
    return path


def _convert(model: Path, validation: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", "convert", str(model), "--profile", "rpi4-64",
                           "--name", "m", "--version", "1.0.0", "--quantize", "none", "--validation", str(validation),
                           "--labels", "label", "-o", str(validation.parent / "dist")],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("cells, words", [
    ({5: "nan", 9: "NaN"}, "data row 6, column 'b' is NaN (a missing value), as are values in 1 more row(s)"),
    ({2: "inf"}, "data row 3, column 'b' is infinite"),
    ({0: "1e39"}, "data row 1, column 'b' is infinite (or beyond float32's range)"),
])
def test_non_finite_validation_rows_are_one_line_naming_the_row(model: Path, tmp_path: Path, cells: dict[int, str],
                                                                 words: str) -> None:
    lines = ["a,b,c,label"] + [f"0.5,{cells.get(i, '1.0')},-0.5,{i % 2}" for i in range(20)]
    validation = tmp_path / "val.csv"
    validation.write_text("\n".join(lines) + "\n")
    done = _convert(model, validation)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgefleet: error:")]
    assert len(errors) == 1, done.stderr
    assert words in errors[0] and "fix: drop or fill in the rows with missing values" in errors[0], errors[0]
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
