"""``convert``: one model in, one verified bundle out.

The steps, in order: resolve the options against the firmware profile, load the source
model and the data, build the converted model (ONNX or TFLite, quantized), run original and
converted side by side, check the profile's tolerance and size budget, and only then write
``OUTPUT_DIR/NAME-VERSION.tar.gz`` atomically. A miss raises ToleranceError and writes
nothing, unless ``force``.

The manifest's report holds only deterministic numbers (sizes, agreement, errors,
accuracy), so converting twice gives the same bundle sha256; host latency is measured and
returned in ``ConversionResult.report`` but kept out of the bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.converted import Converted
from converter.data import Dataset, load_dataset
from converter.errors import ConverterError, OptionsError, ToleranceError
from converter.image_inputs import image_specs
from converter.image_inputs import tensors as image_tensors
from converter.predictors import Batch, Outputs, Predictor, batch_rows
from converter.quantize import CALIBRATION_METHODS
from converter.source_model import SourceModel, has_tensor_inputs
from edgefleet import __version__
from edgefleet.bundle import bundle_filename, read_bundle, write_bundle
from edgefleet.manifest import FORMATS, HealthCheck, Manifest, TensorSpec
from edgefleet.profiles import QUANTIZATIONS, Profile, load_profile
from edgefleet.summaries import MAX_BINNED_FEATURES
from edgefleet.version import ModelVersion, check_model_name

log = logging.getLogger(__name__)

SYNTHESIZED_ROWS = 256
SYNTHESIZED_SEED = 7
SYNTHESIZED_MAX_BYTES = 64 << 20  # made-up tensor samples: fewer rows (at least 8) where samples are large
# Steps reported to the progress callback, in order.
STEPS = ("load", "convert", "compare", "latency", "write")


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert, for which profile, and how. ``None`` means "the profile's default"."""

    model_path: Path
    profile: str
    name: str
    version: str
    output_dir: Path
    format: str | None = None
    quantize: str | None = None
    calibration: Path | None = None
    validation: Path | None = None
    labels: str | None = None
    calibration_method: str = "minmax"
    force: bool = False
    images: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Image inputs declared by name, with their ImageSpec fields (``converter.image_inputs``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_path", Path(self.model_path))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for attr in ("calibration", "validation"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, Path(value))
        try:
            check_model_name(self.name)
            ModelVersion.parse(self.version)
        except Exception as exc:
            raise OptionsError(str(exc)) from exc
        if self.format is not None and self.format not in FORMATS:
            raise OptionsError(f"format {self.format!r} is not known", fix="use --format onnx or --format tflite")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise OptionsError(f"quantization {self.quantize!r} is not known", fix=f"use one of {', '.join(QUANTIZATIONS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionsError(f"calibration method {self.calibration_method!r} is not known",
                               fix=f"use one of {', '.join(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class ConversionResult:
    bundle_path: Path
    sha256: str
    manifest: Manifest
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or self.manifest.model_file not in self.manifest.files:
            raise ConverterError(f"internal: conversion result for {self.bundle_path} is incomplete")


def _resolve_format(options: ConvertOptions, profile: Profile, framework: str) -> str:
    fmt = options.format
    if fmt is None:
        # TFLite is a Keras or SavedModel source's natural target (TensorFlow's own converter);
        # ONNX (Keras' export through tf2onnx) when asked for, or where the profile takes no TFLite.
        fmt = "tflite" if framework in ("keras", "savedmodel") and "tflite" in profile.allowed_formats else profile.default_format
    if fmt not in profile.allowed_formats:
        raise OptionsError(f"profile {profile.name} does not take {fmt} models (it allows {', '.join(profile.allowed_formats)})",
                           fix=f"use --format {profile.allowed_formats[0]} or a profile that allows {fmt}")
    return fmt


def _load_data(path: Path | None, labels: str | None, source: SourceModel) -> Dataset | None:
    if path is None:
        return None
    data = load_dataset(path, labels_column=labels, columns=source.inputs)
    data.check_inputs(source)
    return data


def _evaluation_rows(validation: Dataset | None, calibration: Dataset | None, source: SourceModel) -> tuple[str, Dataset]:
    if validation is not None:
        return "validation", validation
    if calibration is not None:
        return "calibration", calibration
    # Nothing given: standard-normal rows of the right width prove the model runs, not that it is accurate.
    rng = np.random.default_rng(SYNTHESIZED_SEED)
    if has_tensor_inputs(source):
        return "synthesized", _synthesized_tensors(source, rng)
    if source.inputs is None:
        rows = rng.standard_normal((SYNTHESIZED_ROWS, source.n_features)).astype(np.float32)
        return "synthesized", Dataset(rows, None, None, "synthesized")
    # A column model: standard-normal numbers, and the training categories drawn at random.
    columns = {spec.name: (rng.choice(np.asarray(spec.categories or ("",), dtype=object), (SYNTHESIZED_ROWS, 1))
                           if spec.dtype == "string" else rng.standard_normal((SYNTHESIZED_ROWS, 1)).astype(spec.dtype))
               for spec in source.inputs}
    numeric = [spec.name for spec in source.inputs if spec.dtype != "string"]
    features = (np.concatenate([columns[n].astype(np.float32) for n in numeric], axis=1) if numeric
                else np.zeros((SYNTHESIZED_ROWS, 0), np.float32))
    return "synthesized", Dataset(features, None, tuple(numeric), "synthesized", columns)


def _synthesized_tensors(source: SourceModel, rng: np.random.Generator) -> Dataset:
    """Random samples for each tensor input: standard normal numbers, integers of the dtype's
    range (0 or 1 for int32/int64: an index could overrun an embedding), random booleans."""
    assert source.inputs is not None
    dynamic = [spec for spec in source.inputs if -1 in spec.shape[1:]]
    if dynamic:
        raise OptionsError(f"{source.path}: input {dynamic[0].name!r} has shape {list(dynamic[0].shape)}, with a dynamic "
                           "dimension besides the batch, so no samples can be made up for it",
                           fix="give --validation (or --calibration) data: an .npz file with one array per input name")
    sample_bytes = sum(int(np.prod(spec.shape[1:])) * 4 for spec in source.inputs)
    rows = max(8, min(SYNTHESIZED_ROWS, SYNTHESIZED_MAX_BYTES // max(sample_bytes, 1)))
    arrays: dict[str, np.ndarray] = {}
    pixels: dict[str, np.ndarray] = {}
    for spec in source.inputs:
        shape = (rows, *spec.shape[1:])
        if spec.image is not None:  # an image input: random 8-bit pixels, preprocessed as a device would
            image = spec.image
            pixels[spec.name] = rng.integers(0, 256, (rows, image.height, image.width, image.channels)).astype(np.uint8)
            arrays.update(image_tensors({spec.name: pixels[spec.name]}, {spec.name: spec}))
        elif spec.dtype.startswith("float"):
            arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
        elif spec.dtype == "bool":
            arrays[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif spec.dtype in ("int8", "uint8"):
            info = np.iinfo(np.dtype(spec.dtype))
            arrays[spec.name] = rng.integers(info.min, int(info.max) + 1, shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return Dataset(np.zeros((rows, 0), np.float32), None, None, "synthesized", arrays, pixels or None)


def _original_predictor(source: SourceModel) -> Predictor:
    from converter.predictors import EstimatorPredictor, OnnxPredictor

    if source.framework == "onnx":
        from converter.onnxgraph import graph_outputs

        return OnnxPredictor(source.model.SerializeToString(),
                             {t.name: t.role for t in graph_outputs(source.model) if t.role != "other"})
    if source.framework in ("keras", "savedmodel"):
        from converter.tf_source import TensorflowPredictor

        return TensorflowPredictor(source)
    return EstimatorPredictor(source.model, source.task)


def _build(fmt: str, quantize: str, source: SourceModel, calibration: Batch | None, method: str) -> Converted:
    if fmt == "onnx":
        from converter.onnxbuild import build_onnx

        return build_onnx(source, quantize, calibration, method)
    from converter.tflite import build_tflite

    return build_tflite(source, quantize, calibration)


def _compare(task: str, original: Outputs, converted: Outputs, labels: Any, class_labels: Any) -> dict[str, Any]:
    from converter.proof import compare_classifier, compare_regressor

    if task == "classification":
        return compare_classifier(original, converted, class_labels, labels)
    return compare_regressor(original, converted)


def _reference(evaluation: Dataset, feature_names: Sequence[str] | None, converted: Converted, original: Outputs,
               source: SourceModel) -> dict[str, Any]:
    """reference.json: a column model's features are its inputs (numbers binned, strings by
    category); a matrix model's are the matrix columns, as always."""
    from converter.golden import (
        column_reference_document,
        reference_document,
        summary_reference_document,
    )

    if has_tensor_inputs(source) and evaluation.columns is not None:
        images = {name: spec.image for name, spec in image_specs(source.inputs).items() if spec.image is not None}
        return summary_reference_document(evaluation.columns, original, source.task, source.class_labels, images)
    if source.inputs is None and evaluation.width > MAX_BINNED_FEATURES:  # a wide window: summarised
        return summary_reference_document({converted.inputs[0]["name"]: evaluation.features}, original, source.task,
                                          source.class_labels)
    if source.inputs is not None and evaluation.columns is not None:
        specs = [TensorSpec.from_dict(dict(spec), f"inputs[{i}].") for i, spec in enumerate(converted.inputs)]
        return column_reference_document(evaluation.columns, specs, original, source.task, source.class_labels)
    return reference_document(evaluation.features, feature_names, original, source.task, source.class_labels)


def _compact_golden(evaluation: Dataset, source: SourceModel) -> bool:
    """golden.npz (compact, inputs in their own dtypes) for tensor inputs and wide windows."""
    return (has_tensor_inputs(source) and evaluation.columns is not None) or \
        (source.inputs is None and evaluation.width > MAX_BINNED_FEATURES)


def _golden(evaluation: Dataset, converted: Converted, original: Outputs, source: SourceModel) -> tuple[str, bytes]:
    """The golden file's name and bytes: golden.npz where ``_compact_golden``, golden.json for
    every other model (its bytes as always)."""
    from converter.golden import golden_document, golden_indices, golden_npz
    from edgefleet.canonical import pretty_json
    from edgefleet.golden import NPZ_NAME

    if _compact_golden(evaluation, source):
        arrays = evaluation.columns if evaluation.columns is not None else \
            {converted.inputs[0]["name"]: evaluation.features}
        # The rows the converter checked (chosen by the tensors' size); an image input keeps its
        # 8-bit pixels, which a device's health check preprocesses again (edgefleet.images).
        rows = golden_indices(evaluation.batch, compact=True)
        return NPZ_NAME, golden_npz({**arrays, **(evaluation.pixels or {})}, original, source.task,
                                    source.class_labels, rows=rows)
    return "golden.json", pretty_json(golden_document(evaluation.batch, original, source.task, source.class_labels))


def _golden_failures(evaluation: Dataset, source: SourceModel, original: Outputs, converted: Outputs,
                     profile: Profile) -> list[str]:
    """How the converted model misses the profile's tolerance on the golden samples alone: a
    device's health check runs exactly those, so a bundle that passes on the whole validation set
    but misses here would be refused by every device (1 wrong label of 32 is 0.969 agreement)."""
    from converter.golden import golden_indices
    from converter.proof import tolerance_failures

    rows = golden_indices(evaluation.batch, compact=_compact_golden(evaluation, source))
    metrics = _compare(source.task, original.take(rows), converted.take(rows), None, source.class_labels)
    return [f"on the bundle's {len(rows)} golden samples, which a device's health check runs, {failure}"
            for failure in tolerance_failures(source.task, metrics, 0, profile)]


def _manifest_fields(options: ConvertOptions, profile: Profile, source: SourceModel, converted: Converted,
                     quantize: str, report: Mapping[str, Any], feature_names: Sequence[str] | None,
                     golden_name: str) -> dict[str, Any]:
    """The manifest as a dict without ``files`` (``write_bundle`` fills those in from the bytes)."""
    inputs = [dict(spec) for spec in converted.inputs]
    if source.inputs is None and feature_names and len(feature_names) == source.n_features:
        inputs[0]["feature_names"] = list(feature_names)
    _carry_images(inputs, source)
    specs = [TensorSpec.from_dict(spec, f"inputs[{i}].") for i, spec in enumerate(inputs)]
    return {
        # The lowest schema that holds these inputs (and golden.npz): a matrix model keeps its schema-1 bytes.
        "schema_version": max(Manifest.lowest_schema(specs), 2 if golden_name.endswith(".npz") else 1),
        "name": options.name,
        "version": options.version,
        "format": converted.format,
        "task": source.task,
        "quantization": quantize,
        "runtime": {**converted.runtime, "execution_providers": list(profile.execution_providers)},
        "inputs": inputs,
        "outputs": list(converted.outputs),
        "class_labels": list(source.class_labels) if source.class_labels is not None else None,
        "profiles": [profile.name],
        "source": {"framework": source.framework, "kind": source.kind, "sha256": source.sha256, "size": source.size,
                   "file": source.path.name},
        "report": dict(report),
        "health_check": HealthCheck(profile.tolerance.min_agreement, profile.tolerance.max_rel_error,
                                    profile.latency_budget_ms).to_dict(),
        "golden_file": golden_name,
        "reference_file": "reference.json",
        "created_by": f"edgefleet {__version__} converter",
    }


def _carry_images(inputs: list[dict[str, Any]], source: SourceModel) -> None:
    """Declared image inputs described as images in the manifest, whatever builder made the model
    (an exporter that describes its inputs afresh would drop the declaration)."""
    images = image_specs(source.inputs)
    by_name = {spec["name"]: spec for spec in inputs}
    for name, spec in images.items():
        built = by_name.get(name)
        if built is None:
            raise ConverterError(f"image input {name!r} is not among the converted model's inputs "
                                 f"({', '.join(by_name)})", fix="convert to a format that keeps the input's name "
                                 "(--format onnx), or report this as a bug")
        if built.get("kind") != "image":
            built.update(kind="image", image=spec.image.to_dict() if spec.image else None, shape=list(spec.shape))


def _advice(fmt: str, converted: Converted, profile: Profile, calibration: bool) -> list[Any]:
    """Which quantizations suit this model on this profile (``converter.advice``), from the op
    types of the ONNX model built (a TFLite model's are not read: every mode is judged to apply)."""
    from converter.advice import quantization_advice

    ops: set[str] = set()
    ml: list[str] = []
    if fmt == "onnx":
        import onnx

        from converter.onnxgraph import ml_ops

        model = onnx.load_model_from_string(converted.model_bytes)
        ops = {n.op_type for n in model.graph.node}
        ml = ml_ops(model)
    return quantization_advice(fmt, ops, ml, profile, calibration=calibration)


def convert(options: ConvertOptions, *, progress: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert ``options.model_path`` into one bundle; see the module docstring for the steps."""
    from converter.export import unseen_categories
    from converter.image_inputs import declare
    from converter.latency import measure
    from converter.proof import tolerance_failures
    from converter.source import load_source
    from edgefleet.canonical import pretty_json

    step = progress or (lambda _name: None)
    profile = load_profile(options.profile)
    step("load")
    source = declare(load_source(options.model_path), options.images)
    fmt = _resolve_format(options, profile, source.framework)
    quantize = options.quantize or profile.default_quantization
    calibration = _load_data(options.calibration, options.labels, source)
    validation = _load_data(options.validation, options.labels, source)
    data_source, evaluation = _evaluation_rows(validation, calibration, source)
    static = quantize in ("int8-static", "int8")
    calibration_rows = calibration.batch if calibration is not None else None
    if static and calibration_rows is None and validation is not None:
        log.warning("no --calibration given: calibrating %s on the validation rows", quantize)
        calibration_rows = validation.batch
    step("convert")
    converted = _build(fmt, quantize, source, calibration_rows, options.calibration_method)
    step("compare")
    original_predictor = _original_predictor(source)
    original = original_predictor.predict(evaluation.batch)
    result = converted.predictor.predict(evaluation.batch)
    metrics = _compare(source.task, original, result, evaluation.labels, source.class_labels)
    failures = tolerance_failures(source.task, metrics, len(converted.model_bytes), profile)
    if not failures:
        failures = _golden_failures(evaluation, source, original, result, profile)
    if source.inputs is not None:  # the numeric columns, named by the data (the manifest names every input)
        feature_names = evaluation.feature_names
    else:
        feature_names = source.feature_names or (evaluation.feature_names if evaluation.feature_names else None)
    report: dict[str, Any] = {
        "data": data_source,
        "rows": evaluation.rows,
        "format": fmt,
        "quantization": quantize,
        "size_before": converted.float_bytes,
        "size_after": len(converted.model_bytes),
        "size_ratio": round(len(converted.model_bytes) / converted.float_bytes, 4) if converted.float_bytes else None,
        **metrics,
        "passed": not failures,
        "failures": failures,
    }
    unseen = unseen_categories(source)
    if unseen is not None:
        report["unseen_categories"] = unseen
    if static:
        report["calibration_rows"] = batch_rows(calibration_rows) if calibration_rows is not None else 0
        if fmt == "onnx":  # TFLite's converter has one calibration scheme of its own
            report["calibration_method"] = options.calibration_method
    step("latency")
    latency = {
        "original": measure(original_predictor.predict, evaluation.batch).to_dict(),
        "converted": measure(converted.predictor.predict, evaluation.batch).to_dict(),
    }
    full_report = {**report, "latency": latency, "profile": profile.name,
                   # advice, not proof: kept out of the manifest's report like the latency
                   "quantizations": [a.to_dict() for a in _advice(fmt, converted, profile, calibration_rows is not None)]}
    if failures and not options.force:
        raise ToleranceError(f"the converted model misses profile {profile.name}: " + "; ".join(failures),
                             report=full_report,
                             fix="try a milder --quantize (int8-dynamic, fp16 or none), more or better calibration data, "
                                 "or --force to write the bundle anyway")
    step("write")
    golden_name, golden = _golden(evaluation, converted, original, source)
    files = {
        f"model.{fmt}": converted.model_bytes,
        golden_name: golden,
        "reference.json": pretty_json(_reference(evaluation, feature_names, converted, original, source)),
    }
    manifest_fields = _manifest_fields(options, profile, source, converted, quantize, report, feature_names, golden_name)
    path = options.output_dir / bundle_filename(options.name, options.version)
    sha256 = write_bundle(path, manifest_fields, files)
    # Read back through the one gate every consumer uses: what we return is what they will see.
    manifest = read_bundle(path).manifest
    full_report["bundle"] = str(path)
    full_report["sha256"] = sha256
    return ConversionResult(path, sha256, manifest, full_report)
