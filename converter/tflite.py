"""Building the TFLite flavour of a bundle.

Two roads lead to a TensorFlow SavedModel, and one converter takes it from there:

    scikit-learn / ONNX  -> float ONNX -> standard-op sub-graph -> onnx2tf -> SavedModel
    Keras .keras         -> tf.lite.TFLiteConverter.from_keras_model
    SavedModel directory -> tf.lite.TFLiteConverter.from_saved_model

Keras and SavedModel sources may have N-D and several named inputs (images, sensor windows, an
image with a metadata vector): the bundle's inputs keep the source's names and shapes, matched
to the .tflite file's inputs through its signature; int8 inputs carry their scale and zero point.
ONNX and scikit-learn sources take one ``[batch, features]`` input only (onnx2tf would turn an
NCHW input into an NHWC one, and the bundle's inputs would no longer be the source's).

Only the probabilities (classifiers) or value (regressors) output travels: ai.onnx.ml ops
such as ArrayFeatureExtractor or TreeEnsemble* have no TFLite form, and a model that needs
one for that output is refused with UnsupportedOpError. Quantization modes:

    none          float32
    fp16          float16 weights (dequantized at load), float32 math on CPUs
    int8-dynamic  int8 weights, float activations (dynamic range)
    int8 / int8-static  full integer: int8 weights, activations, input and output tensors,
                  ranges from a representative dataset (the calibration rows, in order)

The report's "before" size is the float32 ONNX model for the onnx2tf road, and the float32
TFLite model (converted once more when quantizing) for Keras and SavedModel sources.

TensorFlow comes from ``tf_runtime`` (logging silenced, seeds fixed) and onnx2tf through
``edgefleet.extras.require``, both from the extra ``tflite-convert``. Loading Keras and
SavedModel sources is ``tf_source``'s job, not this module's.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from converter.converted import Converted
from converter.errors import ConverterError, NotAModelError, OptionsError, UnsupportedOpError
from converter.predictors import Batch, TflitePredictor
from converter.source_model import SourceModel
from converter.tf_runtime import EXTRA, quiet_native_output, tensorflow

REPRESENTATIVE_ROWS = 300


def _standard_part(source: SourceModel) -> tuple[Any, int]:
    """The float ONNX sub-graph TFLite can take, and the float ONNX size (the report's "before").

    Checked before TensorFlow is imported, so an unsupported op fails fast.
    """
    from converter.export import float_onnx
    from converter.onnxgraph import graph_outputs, single_input, standard_subgraph

    float_model = float_onnx(source)
    role = "probabilities" if source.task == "classification" else "value"
    wanted = next((t.name for t in graph_outputs(float_model) if t.role == role), None)
    if wanted is None:
        raise NotAModelError(f"{source.path} has no {role} output to convert to TFLite",
                             fix="export classifiers with a probabilities output (ZipMap disabled)")
    sub = standard_subgraph(float_model, single_input(float_model, str(source.path)).name, [wanted], "TFLite")
    return sub, len(float_model.SerializeToString())


def _converter_for(tf: ModuleType, source: SourceModel, standard_part: Any, workdir: Path) -> Any:
    if source.framework == "keras":
        return tf.lite.TFLiteConverter.from_keras_model(source.model)
    if source.framework == "savedmodel":
        return tf.lite.TFLiteConverter.from_saved_model(str(source.path))
    import onnx

    onnx_path = workdir / "model.onnx"
    onnx.save_model(standard_part, onnx_path)
    saved_model = workdir / "saved_model"
    onnx2tf = _onnx2tf()
    _reset_layer_names(tf)
    try:
        with quiet_native_output():
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(saved_model),
                            non_verbose=True, verbosity="error", copy_onnx_input_output_names_to_tflite=True)
    except SystemExit as exc:  # onnx2tf calls sys.exit on conversion errors
        raise ConverterError(f"onnx2tf could not convert the model (exit {exc.code})",
                             fix="use --format onnx, or simplify the model to standard ONNX ops") from exc
    except Exception as exc:
        raise ConverterError(f"onnx2tf could not convert the model: {exc}", fix="use --format onnx") from exc
    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model))


def _reset_layer_names(tf: ModuleType) -> None:
    """Restart Keras' per-process layer counters (``model_6/tf.linalg.matmul_5``...).

    onnx2tf builds a tf_keras model whose counter-numbered names end up as tensor names in
    the .tflite file: without a reset, the second conversion in a process gives other bytes.
    """
    tf.keras.backend.clear_session()
    try:
        import tf_keras
    except ImportError:  # onnx2tf needs tf_keras; without it conversion fails later with a clear error
        return
    tf_keras.backend.clear_session()


def _onnx2tf() -> ModuleType:
    from edgefleet.extras import require

    return require("onnx2tf", EXTRA, "ONNX to TFLite conversion")


def _representative(calibration: Batch) -> Callable[[], Iterator[list[np.ndarray] | dict[str, np.ndarray]]]:
    """TensorFlow's representative dataset: the first ``REPRESENTATIVE_ROWS`` samples, one at a time,
    in order (a list for a matrix model; by signature input name for named tensor inputs)."""
    if isinstance(calibration, Mapping):
        arrays = {name: np.asarray(values[:REPRESENTATIVE_ROWS]) for name, values in calibration.items()}
        arrays = {name: values.astype(np.float32) if values.dtype.kind == "f" else values
                  for name, values in arrays.items()}
        rows = min(len(values) for values in arrays.values())

        def by_name() -> Iterator[dict[str, np.ndarray]]:
            for i in range(rows):
                yield {name: values[i:i + 1] for name, values in arrays.items()}
        return by_name
    matrix = np.asarray(calibration[:REPRESENTATIVE_ROWS], dtype=np.float32)

    def in_order() -> Iterator[list[np.ndarray]]:
        for row in matrix:
            yield [row[None, :]]
    return in_order


def _configure(tf: ModuleType, converter: Any, quantize: str, calibration: Batch | None) -> None:
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize in ("int8", "int8-static"):
        if calibration is None:
            raise OptionsError(f"{quantize} TFLite quantization needs calibration data for its representative dataset",
                               fix="pass --calibration FILE (a few hundred representative rows, or samples in an "
                                   ".npy/.npz file for N-D inputs), or use int8-dynamic")
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif quantize != "int8-dynamic":
        raise OptionsError(f"quantization {quantize!r} is not known for TFLite",
                           fix="use none, fp16, int8-dynamic or int8")


def _spec(detail: dict[str, Any], role: str, name: str | None = None,
          shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A manifest spec for an interpreter tensor: a matrix model's ``[-1, width]`` under the
    tensor's own name, or a named input's name and shape (as the source declares them)."""
    dtype = np.dtype(detail["dtype"]).name
    spec: dict[str, Any] = {"name": name or detail["name"], "dtype": dtype,
                            "shape": list(shape) if shape is not None else [-1, int(detail["shape"][-1])], "role": role}
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype in ("int8", "uint8") and scale:
        spec["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return spec


def _input_specs(source: SourceModel, predictor: TflitePredictor) -> tuple[dict[str, Any], ...]:
    if source.inputs is None:
        return (_spec(predictor.interpreter.get_input_details()[0], "other"),)
    details = predictor.input_details()
    if set(details) != {spec.name for spec in source.inputs}:
        raise ConverterError(f"the TFLite model's inputs {sorted(details)} are not the source's "
                             f"{[spec.name for spec in source.inputs]}",
                             fix="give the model's inputs distinct names (keras.Input(name=...)) and convert again")
    return tuple(_spec(details[spec.name], "other", spec.name, spec.shape) for spec in source.inputs)


def _convert(tf: ModuleType, source: SourceModel, standard_part: Any, workdir: Path, quantize: str,
             calibration: Batch | None) -> bytes:
    workdir.mkdir()
    converter = _converter_for(tf, source, standard_part, workdir)
    _configure(tf, converter, quantize, calibration)
    try:
        with quiet_native_output(), warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": the int8 input's range comes from the
            # representative dataset, as intended.
            warnings.simplefilter("ignore", UserWarning)
            return bytes(converter.convert())
    except Exception as exc:  # TFLite's converter raises ConverterError / RuntimeError with MLIR text
        raise ConverterError(f"the TFLite converter failed: {str(exc).splitlines()[0] if str(exc) else exc}",
                             fix="try --quantize none or fp16, or --format onnx") from exc


def build_tflite(source: SourceModel, quantize: str, calibration: Batch | None) -> Converted:
    if source.inputs is not None and all(spec.kind == "column" for spec in source.inputs):
        raise UnsupportedOpError(f"{source.path} takes named columns, which TFLite cannot: it has no string tensors, "
                                 "and this converter builds single-input TFLite models only",
                                 op="ColumnTransformer", fix="use --format onnx with a profile that allows ONNX")
    tensorflow_source = source.framework in ("keras", "savedmodel")
    if not tensorflow_source and (source.inputs is not None or isinstance(calibration, Mapping)):
        # onnx2tf turns NCHW inputs into NHWC ones: the bundle's inputs would no longer be the source's.
        shown = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in (source.inputs or ())[:4])
        raise UnsupportedOpError(f"{source.path} takes named tensor inputs ({shown}); this converter takes ONNX "
                                 "models to TFLite only when they have one [batch, features] input",
                                 op="N-D input", fix="use --format onnx with a profile that allows ONNX "
                                 "(e.g. rpi4-64, generic-x86_64), or start from the Keras model for TFLite")
    standard_part, float_bytes = (None, 0) if tensorflow_source else _standard_part(source)
    tf = tensorflow()
    with tempfile.TemporaryDirectory(prefix="edgefleet-tflite-") as tmp:
        data = _convert(tf, source, standard_part, Path(tmp) / "quantized", quantize, calibration)
        if tensorflow_source:
            # The report's "before" is the float32 TFLite model: a .keras file also holds the
            # optimizer's state (three times the weights after Adam), a SavedModel its graph twice.
            float_bytes = len(data) if quantize == "none" else \
                len(_convert(tf, source, None, Path(tmp) / "float32", "none", None))
    predictor = TflitePredictor(data, source.task)
    interpreter = predictor.interpreter
    role = "probabilities" if source.task == "classification" else "value"
    inputs = _input_specs(source, predictor)
    outputs = (_spec(interpreter.get_output_details()[0], role),)
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})  # no public API lists the ops
    runtime = {"engine": "litert", "ops": ops}
    return Converted("tflite", data, predictor, inputs, outputs, runtime, float_bytes)
