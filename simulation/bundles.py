"""The demo's model versions, built with the real converter.

``DemoModels`` trains the scikit-learn digits examples once and converts them for the two
halves of the demo fleet: ONNX int8 for ``rpi4-64`` (model ``digits``) and TFLite int8 for
``jetson-orin-nano`` (model ``digits-lite``). ``break_golden`` makes the demo's version 2: a
bundle that passes conversion, signing and every hash check but whose golden samples
disagree with its model, so a device's health check must refuse it. It deliberately does
not push anything to a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.bundle import bundle_filename, read_bundle, write_bundle
from edgefleet.canonical import pretty_json

# (profile, model name, format, quantization) for each half of the fleet.
ONNX_TARGET = ("rpi4-64", "digits", "onnx", "int8-static")
TFLITE_TARGET = ("jetson-orin-nano", "digits-lite", "tflite", "int8")


def break_golden(good_bundle: Path, output_dir: Path, *, version: str) -> Path:
    """Rewrite ``good_bundle`` as ``version`` with golden outputs moved one class along.

    Every class label moves to the next class and every probability row rotates by one, so
    the model still loads and runs, the archive is well formed, but not one golden row agrees.
    """
    good = read_bundle(good_bundle)
    golden = good.golden()
    labels = list(good.manifest.class_labels or [])
    if not labels:
        raise ValueError(f"{good_bundle} is not a classifier bundle: nothing to shift")
    outputs = golden["outputs"]
    outputs["label"] = [labels[(labels.index(v) + 1) % len(labels)] for v in outputs["label"]]
    if "probabilities" in outputs:
        outputs["probabilities"] = [row[-1:] + row[:-1] for row in outputs["probabilities"]]
    files = dict(good.files)
    files[good.manifest.golden_file] = pretty_json(golden)
    fields = good.manifest.to_dict()
    fields.pop("files")
    fields["version"] = version
    path = Path(output_dir) / bundle_filename(good.manifest.name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bundle(path, fields, files)
    return path


@dataclass
class DemoModels:
    """Trains the examples lazily (once each) and converts them into ``directory``."""

    directory: Path
    reports: list[dict[str, Any]] = field(default_factory=list)
    _examples: dict[str, Any] = field(default_factory=dict)

    def example(self, kind: str) -> Any:
        from converter.examples import write_example

        if kind not in self._examples:
            self._examples[kind] = write_example(self.directory / f"example-{kind}", kind=kind)
        return self._examples[kind]

    def convert(self, target: tuple[str, str, str, str], version: str, *, kind: str = "digits-mlp") -> Any:
        """Convert the ``kind`` example for ``target``; returns the converter's ConversionResult."""
        from converter import ConvertOptions, convert

        profile, name, fmt, quantize = target
        files = self.example(kind)
        result = convert(ConvertOptions(
            model_path=files.model_path, profile=profile, name=name, version=version,
            output_dir=self.directory / "bundles", format=fmt, quantize=quantize,
            calibration=files.calibration_csv, validation=files.validation_csv, labels=files.labels_column,
            force=True,
        ))
        self.reports.append({"model": name, "version": version, "profile": profile, "format": fmt,
                             "quantize": quantize, "kind": kind, "bundle": str(result.bundle_path),
                             "sha256": result.sha256, "report": result.report})
        return result

    def validation_rows(self, kind: str = "digits-mlp") -> list[list[float]]:
        """Feature rows of the validation split (labels dropped), for the prediction load."""
        import csv

        files = self.example(kind)
        with open(files.validation_csv, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            label = header.index(files.labels_column)
            return [[float(v) for i, v in enumerate(row) if i != label] for row in reader]
