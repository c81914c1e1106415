"""`edgefleet agent predict` for models with N-D tensor inputs (issue 12, slice 3): an .npz with
one array per input name, or an .npy for a one-input model, in chunks through the shared parser,
answered as the serving table answers the same samples; misfits refused in words."""

from __future__ import annotations

import csv
import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agent.batch import predict_file
from agent.errors import BatchInputError
from agent.runtime import ModelSession, load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from tests.support.tensor_models import (
    audio_window,
    image_and_metadata,
    image_samples,
    save_samples,
    window_samples,
)


@functools.cache
def bundle(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="edgefleet-batch-tensors-"))
    if name == "vision":
        model, data = image_and_metadata(d / "m.onnx"), save_samples(d / "v.npz", image_samples(40))
    else:
        model, data = audio_window(d / "m.onnx"), save_samples(d / "v.npz", window_samples(20))
    return convert(ConvertOptions(model, "generic-x86_64", name, "1.0.0", d, quantize="none", validation=data)).bundle_path


def session(tmp_path: Path, name: str) -> ModelSession:
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle(name)))
    return load_session(slot, load_profile("generic-x86_64"))


def predictions(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row[0] for row in list(csv.reader(handle))[1:]]


def test_an_npz_of_named_inputs_is_predicted_in_chunks(tmp_path: Path) -> None:
    model = session(tmp_path, "vision")
    samples = image_samples(23, seed=31)
    source = save_samples(tmp_path / "in.npz", samples)
    summary = predict_file(model, source, tmp_path / "out.csv", chunk_rows=5, progress=False)
    table = ServingTable()
    table.swap("vision", model)
    expected = table.predict("vision", {"inputs": {k: v.tolist() for k, v in samples.items()}}).predictions
    assert summary.rows == 23 and predictions(tmp_path / "out.csv") == [str(p) for p in expected]


def test_an_npy_feeds_a_one_input_window_model(tmp_path: Path) -> None:
    model = session(tmp_path, "audio")
    windows = window_samples(6, seed=32)["window"]
    np.save(tmp_path / "in.npy", windows)
    np.savez(tmp_path / "in.npz", window=windows)
    predict_file(model, tmp_path / "in.npy", tmp_path / "a.csv", chunk_rows=4, progress=False)
    predict_file(model, tmp_path / "in.npz", tmp_path / "b.csv", chunk_rows=4, progress=False)
    assert predictions(tmp_path / "a.csv") == predictions(tmp_path / "b.csv")
    np.testing.assert_allclose([float(v) for v in predictions(tmp_path / "a.csv")],
                               model.run_feeds({"window": windows})["value"], rtol=1e-5)


def test_misfitting_files_are_refused_in_words(tmp_path: Path) -> None:
    model = session(tmp_path, "vision")
    samples = image_samples(12, seed=33)
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BatchInputError, match="takes tensors .* which a .csv file does not hold"):
        predict_file(model, tmp_path / "in.csv", tmp_path / "out.csv", progress=False)
    save_samples(tmp_path / "missing.npz", {"image": samples["image"]})
    with pytest.raises(BatchInputError, match="holds array\\(s\\) 'image'; the model takes image, metadata"):
        predict_file(model, tmp_path / "missing.npz", tmp_path / "out.csv", progress=False)
    wrong = {**samples, "metadata": samples["metadata"][:, :3]}
    save_samples(tmp_path / "wrong.npz", wrong)
    with pytest.raises(BatchInputError, match="samples 1-5: input 'metadata' has shape \\[5, 3\\] but the model "
                                              "takes \\[n, 8\\]"):
        predict_file(model, tmp_path / "wrong.npz", tmp_path / "out.csv", chunk_rows=5, progress=False)
    np.save(tmp_path / "one.npy", samples["image"])
    with pytest.raises(BatchInputError, match="holds one array and 'image' is one of 2 inputs"):
        predict_file(model, tmp_path / "one.npy", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()
