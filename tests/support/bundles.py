"""Real bundles for tests of the agent, the server and the demo, built with the converter.

    make_onnx_bundle(tmp_path)           digits MLP as ONNX for generic-x86_64
    make_tflite_bundle(tmp_path)         digits MLP as full-int8 TFLite for rpi4-64 (needs TensorFlow)
    make_broken_bundle(tmp_path)         converts fine, but its golden samples disagree with its model
    make_shifted_bundle(tmp_path)        the digits MLP trained on inverted digits: passes its golden
                                         samples, disagrees with make_onnx_bundle's on live digits
    with_input_guard(good, dir, v, g)    a bundle's model behind ONNX nodes on its input (a fault that
                                         only some inputs show), as version v

The trained examples (each kind, and the shifted model) are cached for the whole test run
(training is the slow part): in tests/support/shared.py's directory, made once for all
pytest-xdist workers, so the first worker to ask trains it and the others read it; outside
pytest, in a private temporary directory per process. Each call still runs a real conversion into the caller's directory.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter import ConvertOptions, ExampleFiles, convert, write_example
from edgefleet.bundle import bundle_filename, read_bundle, write_bundle
from edgefleet.manifest import Manifest
from tests.support.shared import locked, shared_dir


@functools.cache
def example(kind: str = "digits-mlp") -> ExampleFiles:
    """The trained ``kind`` example, trained once per test run and shared by every worker."""
    return _trained_once(kind, lambda directory: write_example(directory, kind=kind))


def _trained_once(name: str, train: Callable[[Path], ExampleFiles]) -> ExampleFiles:
    """``train(directory)``'s files, trained by the first worker that asks and read by the others."""
    shared = shared_dir()
    if shared is None:
        private = tempfile.mkdtemp(prefix=f"edgefleet-example-{name}-")
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        return train(Path(private))
    directory = shared / f"example-{name}"
    record = directory / "example.json"  # written last: its presence means the files are whole
    with locked(shared / f"example-{name}.lock"):
        if record.exists():
            fields = json.loads(record.read_text())
            return ExampleFiles(model_path=Path(fields["model_path"]), calibration_csv=Path(fields["calibration_csv"]),
                                validation_csv=Path(fields["validation_csv"]), labels_column=fields["labels_column"])
        shutil.rmtree(directory, ignore_errors=True)  # a worker that died mid-training left a part
        directory.mkdir()
        files = train(directory)
        record.write_text(json.dumps({"model_path": str(files.model_path),
                                      "calibration_csv": str(files.calibration_csv),
                                      "validation_csv": str(files.validation_csv),
                                      "labels_column": files.labels_column}))
        return files


def _convert(tmp_dir: Path, *, name: str, version: str, profile: str, fmt: str, quantize: str, kind: str,
             force: bool = False) -> Path:
    files = example(kind)
    result = convert(ConvertOptions(
        model_path=files.model_path, profile=profile, name=name, version=version, output_dir=Path(tmp_dir),
        format=fmt, quantize=quantize, calibration=files.calibration_csv, validation=files.validation_csv,
        labels=files.labels_column, force=force,
    ))
    return result.bundle_path


def make_onnx_bundle(tmp_dir: Path, *, name: str = "digits", version: str = "1.0.0", profile: str = "generic-x86_64",
                     quantize: str = "none", kind: str = "digits-mlp") -> Path:
    """An ONNX bundle of the ``kind`` example; returns the path of NAME-VERSION.tar.gz in ``tmp_dir``."""
    return _convert(tmp_dir, name=name, version=version, profile=profile, fmt="onnx", quantize=quantize, kind=kind)


def make_tflite_bundle(tmp_dir: Path, *, name: str = "digits-lite", version: str = "1.0.0", profile: str = "rpi4-64",
                       quantize: str = "int8", kind: str = "digits-mlp") -> Path:
    """A TFLite bundle (full int8 by default) of the ``kind`` example. Needs the tflite-convert extra."""
    return _convert(tmp_dir, name=name, version=version, profile=profile, fmt="tflite", quantize=quantize, kind=kind)


def make_broken_bundle(tmp_dir: Path, *, name: str = "digits-broken", version: str = "1.0.0",
                       profile: str = "generic-x86_64", kind: str = "digits-mlp") -> Path:
    """A well-formed bundle whose golden outputs disagree with its model on every row.

    The model is the real conversion; the golden outputs are what a model with every class
    shifted by one would say (probability columns rotated, labels moved to the next class),
    so a device health check must fail it while every signature and hash still verifies.
    """
    from simulation.bundles import break_golden

    with tempfile.TemporaryDirectory(prefix="edgefleet-broken-") as staging:
        good = make_onnx_bundle(Path(staging), name=name, version=version, profile=profile, kind=kind)
        return break_golden(good, Path(tmp_dir), version=version)


@functools.cache
def _shifted_example() -> ExampleFiles:
    """The shifted digits model, trained once per test run and shared by every worker like ``example``."""
    from simulation.bundles import SHIFTED_KIND, train_shifted_digits

    def train(directory: Path) -> ExampleFiles:
        files: ExampleFiles = train_shifted_digits(directory)
        return files

    return _trained_once(SHIFTED_KIND, train)


def make_shifted_bundle(tmp_dir: Path, *, name: str = "digits", version: str = "2.0.0",
                        profile: str = "generic-x86_64") -> Path:
    """An ONNX bundle of the digits MLP trained on inverted digits (a version "trained on shifted data")."""
    files = _shifted_example()
    result = convert(ConvertOptions(
        model_path=files.model_path, profile=profile, name=name, version=version, output_dir=Path(tmp_dir),
        format="onnx", quantize="none", calibration=files.calibration_csv, validation=files.validation_csv,
        labels=files.labels_column))
    return result.bundle_path


Guard = Callable[[Manifest, str, str], tuple[list[Any], list[Any]]]


def with_input_guard(good: Path, directory: Path, version: str, guard: Guard) -> Path:
    """``good``'s model with ``guard``'s ONNX nodes in front of its input, written as ``version``.

    ``guard(manifest, source, guarded)`` returns (initializers, nodes) that read the model's
    input ``source`` and write ``guarded``, which every node of the model then reads instead.
    The golden samples, reference and manifest (but the version) are ``good``'s, so whether the
    health check passes is up to the guard.
    """
    import onnx

    bundle = read_bundle(good)
    manifest = bundle.manifest
    graph_model = onnx.load_from_string(bundle.model_bytes)
    graph = graph_model.graph
    source = graph.input[0].name
    guarded = f"{source}_guarded"
    for node in graph.node:
        node.input[:] = [guarded if name == source else name for name in node.input]
    initializers, nodes = guard(manifest, source, guarded)
    graph.initializer.extend(initializers)
    model_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + model_nodes)
    onnx.checker.check_model(graph_model)
    files = dict(bundle.files)
    files[manifest.model_file] = graph_model.SerializeToString()
    fields = manifest.to_dict()
    fields.pop("files")
    fields["version"] = version
    path = directory / bundle_filename(manifest.name, version)
    write_bundle(path, fields, files)
    return path
