"""The demo's model versions, built with the real converter.

``DemoModels`` trains the demo's models once each and converts them for the two halves of the
demo fleet; nothing is downloaded (scikit-learn's bundled digits and wine data):

    rpi4-64           digits   ONNX int8-static   the digits MLP, one row of 64 pixels in
                      wine     ONNX float32       a DataFrame pipeline (ColumnTransformer: scaled
                                                  numbers, a one-hot string column "region"), records in
    jetson-orin-nano  digits-lite TFLite int8     the same digits MLP
                      camera   TFLite int8        a small Keras CNN on the digits as 32x32 RGB
                                                  pictures, declared an image input, PNG in

``break_golden`` makes the demo's version 2: a bundle that passes conversion, signing and every
hash check but whose golden samples disagree with its model, so a device's health check must
refuse it. ``train_shifted_digits`` makes the opposite case (issue 18): the same digits MLP
trained on shifted data (inverted pictures, as from a camera whose exposure changed), whose
golden samples come from that data, so it passes every health check, while on the live digits
a site sends it disagrees with the serving version on most requests: only a shadow stage
catches it. It deliberately does not push anything to a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.bundle import bundle_filename, read_bundle, write_bundle
from edgefleet.canonical import pretty_json
from edgefleet.errors import BundleError

# (profile, model name, format, quantization) for each half of the fleet.
ONNX_TARGET = ("rpi4-64", "digits", "onnx", "int8-static")
TFLITE_TARGET = ("jetson-orin-nano", "digits-lite", "tflite", "int8")
# The second model on each half. The pipeline stays float32: its one-hot encoder and trees have
# no weights int8 could quantize, and the converter refuses a quantization that changes nothing.
PIPELINE_TARGET = ("rpi4-64", "wine", "onnx", "none")
IMAGE_TARGET = ("jetson-orin-nano", "camera", "tflite", "int8")

PIPELINE_KIND = "wine-pipeline"     # converter.examples' DataFrame pipeline
IMAGE_KIND = "camera-cnn"           # train_camera_cnn below
SHIFTED_KIND = "digits-shifted"     # train_shifted_digits below: passes its golden samples, fails shadow
IMAGE_INPUT = "image"
CAMERA_EPOCHS = 3


@dataclass(frozen=True)
class CameraFiles:
    model_path: Path
    calibration_npz: Path
    validation_npz: Path
    labels_key: str


def train_camera_cnn(directory: Path) -> CameraFiles:
    """Train the demo's camera model: the digits as 32x32 RGB pictures (``digit_images``), ten classes.

    Smaller than converter.examples' digits CNN on purpose (the demo runs in the test suite): the
    pictures are 8x8 digits enlarged 4x, so averaging 4x4 blocks first loses nothing, and one 3x3
    convolution over the 8x8 result learns them to about 96% in 3 epochs (a few seconds). Its
    input is still the camera's (None, 32, 32, 3) picture, which the converter declares an image.
    """
    from sklearn.model_selection import train_test_split

    from converter.examples import digit_images
    from converter.tf_runtime import keras as keras3

    keras = keras3()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    images, target = digit_images()
    x_train, x_val, y_train, y_val = train_test_split(images, target, test_size=0.25, random_state=0)
    inputs = keras.Input(images.shape[1:], name=IMAGE_INPUT)
    x = layers.AveragePooling2D(4)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs, name="camera")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=CAMERA_EPOCHS, batch_size=32, verbose=0, shuffle=True)
    directory.mkdir(parents=True, exist_ok=True)
    files = CameraFiles(directory / "camera.keras", directory / "camera-calibration.npz",
                        directory / "camera-validation.npz", "y")
    model.save(files.model_path)
    np.savez(files.calibration_npz, **{IMAGE_INPUT: x_train[:200]})
    np.savez(files.validation_npz, **{IMAGE_INPUT: x_val, files.labels_key: y_val})
    return files


SHIFT_MAX = 16.0  # the digits' pixel range is 0..16: a shifted picture is SHIFT_MAX - pixel


def train_shifted_digits(directory: Path) -> Any:
    """Train converter.examples' digits MLP on inverted digits; write its model and shifted CSVs.

    Returns converter's ``ExampleFiles`` (model, calibration and validation CSVs of the
    inverted pictures), ready for ``converter.convert``: the bundle's golden samples are the
    model's own answers on inverted pictures, so a device's health check passes.
    """
    import csv

    import joblib
    from sklearn.model_selection import train_test_split

    from converter import ExampleFiles
    from converter.examples import CALIBRATION_ROWS, KINDS, LABELS_COLUMN, SEED

    load, make = KINDS["digits-mlp"]
    features, target, names = load()
    shifted = (SHIFT_MAX - np.asarray(features, dtype=np.float32)).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(shifted, target, test_size=0.25, random_state=SEED)
    model = make().fit(x_train, y_train)
    directory.mkdir(parents=True, exist_ok=True)
    files = ExampleFiles(directory / "digits-shifted.joblib", directory / "digits-shifted-calibration.csv",
                         directory / "digits-shifted-validation.csv", LABELS_COLUMN)
    joblib.dump(model, files.model_path)
    for path, header, rows in ((files.calibration_csv, names, x_train[:CALIBRATION_ROWS]),
                               (files.validation_csv, [*names, LABELS_COLUMN], np.column_stack([x_val, y_val]))):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows([[str(int(v)) if float(v).is_integer() else repr(float(v)) for v in row] for row in rows])
    return files


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
    """Trains the examples lazily (once each) and converts them into ``directory``.

    A directory an earlier run left (``edgefleet demo --data-dir DIR`` run again) is reused:
    each example and each conversion writes a record once it is complete (``example.json``,
    ``converted/*.json``), and a later run reads the record instead of training or converting
    again, provided the bundle's bytes still have the recorded SHA-256 and its checks passed.
    Anything else (no record, another hash, a failed report) is trained or converted afresh.
    """

    directory: Path
    reports: list[dict[str, Any]] = field(default_factory=list)
    _examples: dict[str, Any] = field(default_factory=dict)

    def example(self, kind: str) -> Any:
        from converter.examples import write_example

        if kind not in self._examples:
            directory = self.directory / f"example-{kind}"
            record = directory / "example.json"  # written last: its presence means the files are whole
            files = _read_example(record, self.directory)
            if files is None:
                if kind == IMAGE_KIND:
                    files = train_camera_cnn(directory)
                elif kind == SHIFTED_KIND:
                    files = train_shifted_digits(directory)
                else:
                    files = write_example(directory, kind=kind)
                _write_example(record, files, self.directory)
            self._examples[kind] = files
        return self._examples[kind]

    def convert(self, target: tuple[str, str, str, str], version: str, *, kind: str = "digits-mlp") -> Any:
        """Convert the ``kind`` example for ``target``; returns the converter's ConversionResult."""
        profile, name, fmt, quantize = target
        record = self.directory / "converted" / f"{name}-{version}-{profile}-{fmt}-{quantize}-{kind}.json"
        result = _read_conversion(record, self.directory)
        reused = result is not None
        if result is None:
            result = self._convert(target, version, kind)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"bundle": str(result.bundle_path.relative_to(self.directory)),
                                          "sha256": result.sha256,
                                          "report": result.report}))
        inputs = result.manifest.to_dict()["inputs"]
        self.reports.append({"model": name, "version": version, "profile": profile, "format": fmt,
                             "quantize": quantize, "kind": kind, "bundle": str(result.bundle_path),
                             "sha256": result.sha256, "inputs": _input_kinds(inputs), "report": result.report,
                             "reused": reused})
        return result

    def _convert(self, target: tuple[str, str, str, str], version: str, kind: str) -> Any:
        from converter import ConvertOptions, convert

        profile, name, fmt, quantize = target
        files = self.example(kind)
        if isinstance(files, CameraFiles):  # what `edgefleet convert --image image` does
            data: dict[str, Any] = {"calibration": files.calibration_npz, "validation": files.validation_npz,
                                    "labels": files.labels_key, "images": {IMAGE_INPUT: {}}}
        else:
            data = {"calibration": files.calibration_csv, "validation": files.validation_csv,
                    "labels": files.labels_column}
        return convert(ConvertOptions(
            model_path=files.model_path, profile=profile, name=name, version=version,
            output_dir=self.directory / "bundles", format=fmt, quantize=quantize, force=True, **data))

    def validation_rows(self, kind: str = "digits-mlp") -> list[list[float]]:
        """Feature rows of the validation split (labels dropped), for the prediction load."""
        import csv

        files = self.example(kind)
        with open(files.validation_csv, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            label = header.index(files.labels_column)
            return [[float(v) for i, v in enumerate(row) if i != label] for row in reader]

    def validation_records(self, kind: str = PIPELINE_KIND) -> list[dict[str, Any]]:
        """The pipeline's validation rows as records by column name (strings kept), labels dropped."""
        import pandas as pd

        files = self.example(kind)
        frame = pd.read_csv(files.validation_csv).drop(columns=[files.labels_column])
        return [{str(k): v for k, v in record.items()} for record in frame.to_dict("records")]

    def validation_pixels(self) -> np.ndarray:
        """The camera model's validation pictures as 8-bit ``[n, 32, 32, 3]`` pixels (what a camera sends)."""
        files = self.example(IMAGE_KIND)
        with np.load(files.validation_npz) as data:
            return np.asarray(np.round(data[IMAGE_INPUT] * 255.0), dtype=np.uint8)


# Records name files relative to DemoModels.directory, so a copied or moved directory is reused too.


def _write_example(record: Path, files: Any, base: Path) -> None:
    fields = {k: str(v.relative_to(base)) if isinstance(v, Path) else v for k, v in vars(files).items()}
    record.write_text(json.dumps({"camera": isinstance(files, CameraFiles), **fields}))


def _read_example(record: Path, base: Path) -> Any:
    """The files an earlier run trained (``_write_example``), if they are all still there."""
    from converter import ExampleFiles

    if not record.is_file():
        return None
    fields = json.loads(record.read_text())
    camera = fields.pop("camera")
    if camera:
        files: Any = CameraFiles(base / fields["model_path"], base / fields["calibration_npz"],
                                 base / fields["validation_npz"], fields["labels_key"])
    else:
        files = ExampleFiles(base / fields["model_path"], base / fields["calibration_csv"],
                             base / fields["validation_csv"], fields["labels_column"])
    paths = [v for v in vars(files).values() if isinstance(v, Path)]
    return files if all(p.is_file() for p in paths) else None


def _read_conversion(record: Path, base: Path) -> Any:
    """An earlier run's ConversionResult, if its bundle still has the recorded bytes and passed its checks."""
    from converter import ConversionResult

    if not record.is_file():
        return None
    fields = json.loads(record.read_text())
    bundle = base / fields["bundle"]
    if not bundle.is_file() or not fields["report"].get("passed", True):
        return None
    try:
        read = read_bundle(bundle)  # checks every file's hash and the manifest
    except BundleError:
        return None
    if read.sha256 != fields["sha256"]:
        return None  # converted again since (another kind under the same name and version): not this one
    return ConversionResult(bundle, read.sha256, read.manifest, fields["report"])


def _input_kinds(inputs: list[dict[str, Any]]) -> str:
    """What a bundle takes, in one word: "image", "columns" (named records) or "tensor" (rows or arrays)."""
    kinds = {str(i.get("kind") or "tensor") for i in inputs}
    return "image" if "image" in kinds else "columns" if kinds == {"column"} else "tensor"
