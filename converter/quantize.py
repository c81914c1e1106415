"""Quantizing ONNX models with onnxruntime.quantization and onnx float16 conversion.

    none          the float32 graph as exported
    fp16          weights and activations in float16, float32 at the graph's edges (GPU profiles)
    int8-dynamic  int8 weights; activations quantized on the fly per batch (no calibration)
    int8-static   int8 weights and activations in QDQ format, ranges from calibration data
                  (MinMax, Entropy or Percentile); ``int8`` means the same for ONNX

An int8 quantization with nothing to quantize is refused with ``OptionsError`` ("nothing to
quantize"): before it runs when the model has no MatMul, Gemm or Conv (tree ensembles, linear
ai.onnx.ml models, DataFrame pipelines), and after it runs when the result holds no quantized
op. An "int8" bundle that is the float32 model, a little larger (or one whose Concat was
squeezed through int8 for no gain), would mislead whoever picks it.

Calibration data comes as feeds, one array per graph input (one ``[rows, features]`` matrix
for most models; one ``[rows, 1]`` array per column for a DataFrame pipeline; one N-D array per
named input, e.g. an image and a metadata vector), read by one CalibrationDataReader.

Static quantization uses ``per_channel=False``: onnxruntime 1.32 crashes in
``_adjust_weight_scale_for_int32_bias`` with per-channel weights on skl2onnx MLPs (see
shared/pitfalls.md). Calibration rows are taken in file order, never sampled at random, so
the same data gives the same model bytes.

onnxruntime's quantizer works on files; they live in a private temporary directory that is
removed afterwards. This module does not judge the result (see ``proof``).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from converter.errors import ConverterError, OptionsError

if TYPE_CHECKING:
    import onnx

ONNX_MODES = ("none", "fp16", "int8-dynamic", "int8-static", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MAX_CALIBRATION_ROWS = 1024
MAX_CALIBRATION_BYTES = 256 << 20
CALIBRATION_BATCH_BYTES = 16 << 20


# Ops whose weights int8 quantization shrinks. A model without one (tree ensembles, DataFrame
# pipelines: ai.onnx.ml ops plus Concat, Gather, Reshape) gains nothing but lost precision: QDQ
# around its data-movement ops cut a pipeline's agreement to 47% in a probe.
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention"})
# Ops a quantized graph holds (QDQ, dynamic, and the integer kernels): without one, nothing was quantized.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul"})


class _Rows:
    """onnxruntime's CalibrationDataReader protocol over feeds (one array per graph input).

    Small calibration sets (every matrix model's) go as one batch. Large samples (images, audio
    windows) go in batches of ``CALIBRATION_BATCH_BYTES``, all of the same size (the rows past the
    last whole batch are left out), because the Entropy and Percentile calibrators stack
    per-batch results with numpy and fail on a shorter last batch; the calibrator's memory then
    grows with a batch, not with the whole set. At most MAX_CALIBRATION_ROWS rows, and
    MAX_CALIBRATION_BYTES of them, in file order.
    """

    def __init__(self, feeds: Mapping[str, np.ndarray]) -> None:
        arrays = {name: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
                  for name, v in feeds.items()}
        total = min(len(v) for v in arrays.values()) if arrays else 0
        sample = max(sum(int(v[:1].nbytes) for v in arrays.values()), 1)
        rows = min(total, max(1, MAX_CALIBRATION_BYTES // sample))
        size = max(1, CALIBRATION_BATCH_BYTES // sample)
        if rows <= size:
            batches = [{name: v[:rows] for name, v in arrays.items()}]
        else:
            batches = [{name: v[i:i + size] for name, v in arrays.items()} for i in range(0, rows - size + 1, size)]
        self._batches: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # onnxruntime calls this on some calibrators; the rows were consumed once
        pass


def quantize_onnx(model: onnx.ModelProto, mode: str, *, calibration: Mapping[str, np.ndarray] | None = None,
                  method: str = "minmax") -> onnx.ModelProto:
    """Return ``model`` quantized as ``mode``; see the module docstring for the modes.

    ``calibration`` holds the feeds static quantization calibrates on, by graph input name.
    """
    import onnx

    from converter.onnxgraph import tidy

    if mode not in ONNX_MODES:
        raise OptionsError(f"quantization {mode!r} is not known for ONNX", fix=f"use one of {', '.join(ONNX_MODES)}")
    if mode == "none":
        return model
    if mode == "fp16":
        return _fp16(model)
    if not any(n.op_type in WEIGHTED_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
        _nothing_to_quantize(mode, model)
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        work = Path(tmp)
        source, prepared, output = work / "float.onnx", work / "prepared.onnx", work / "quantized.onnx"
        onnx.save_model(model, source)
        _preprocess(source, prepared)
        if mode == "int8-dynamic":
            _dynamic(prepared, output)
        else:
            if calibration is None:
                raise OptionsError(f"{mode} quantization needs calibration data",
                                   fix="pass --calibration FILE (a few hundred representative rows), or use int8-dynamic")
            _static(prepared, output, {name: rows[:MAX_CALIBRATION_ROWS] for name, rows in calibration.items()}, method)
        quantized = tidy(onnx.load_model(output))
    if not any(n.op_type in QUANTIZED_OPS for n in quantized.graph.node):
        _nothing_to_quantize(mode, model)
    return quantized


def _nothing_to_quantize(mode: str, model: onnx.ModelProto) -> NoReturn:
    from converter.onnxgraph import ml_ops

    ml = ml_ops(model)
    ops = ml + sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - set(ml))
    shown = ", ".join(ops[:8]) + (", ..." if len(ops) > 8 else "")
    raise OptionsError(f"{mode} quantization has nothing to quantize: it quantizes the weights of MatMul, Gemm and "
                       f"Conv ops, and this model has none (its ops: {shown}); ai.onnx.ml ops stay in float32",
                       fix="use --quantize none")


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from converter.onnxgraph import ml_ops, tidy

    # ai.onnx.ml ops (tree ensembles, ArrayFeatureExtractor) take float32 only: keep them so.
    block = sorted({*DEFAULT_OP_BLOCK_LIST, *ml_ops(model)})
    try:
        with warnings.catch_warnings():
            # It warns once per weight it clamps into float16's range; the proof measures the effect.
            warnings.simplefilter("ignore", UserWarning)
            converted = convert_float_to_float16(_without_float_casts(model), keep_io_types=True, op_block_list=block)
    except Exception as exc:  # the converter raises bare ValueErrors/KeyErrors from its graph walk
        raise ConverterError(f"float16 conversion failed: {exc}", fix="use --quantize none or int8-dynamic") from exc
    return tidy(converted)


def _without_float_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace Cast-to-float32 of a float32 graph input by Identity.

    skl2onnx starts graphs with such a no-op Cast; the float16 converter leaves its target type
    at float32, which then meets float16 weights and the model fails to load (and blocking Cast
    instead sends the converter into an endless loop).
    """
    import onnx

    float_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx") and to == onnx.TensorProto.FLOAT \
                and node.input[0] in float_inputs:
            node.op_type = "Identity"
            del node.attribute[:]
    return out


# Shape inference knows no types for the outputs of ai.onnx.ml ops (a Pipeline's Scaler feeding
# a MatMul); without a default the quantizer refuses the graph. 1 is TensorProto.FLOAT.
_EXTRA_OPTIONS = {"DefaultTensorType": 1}


def _preprocess(source: Path, output: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # Symbolic shape inference is for transformer-style dynamic shapes; our graphs have fixed widths.
        quant_pre_process(str(source), str(output), skip_symbolic_shape=True)
    except Exception as exc:  # onnxruntime raises a mix of RuntimeError and its own Fail
        raise ConverterError(f"onnxruntime quantization pre-processing failed: {exc}",
                             fix="try --quantize none, or simplify the model") from exc


def _dynamic(source: Path, output: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(source), str(output), weight_type=QuantType.QInt8, extra_options=_EXTRA_OPTIONS)
    except Exception as exc:
        raise ConverterError(f"onnxruntime dynamic quantization failed: {exc}", fix="try --quantize fp16 or none") from exc


def _static(source: Path, output: Path, feeds: Mapping[str, np.ndarray], method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise OptionsError(f"calibration method {method!r} is not known", fix=f"use one of {', '.join(methods)}")
    try:
        quantize_static(str(source), str(output), _Rows(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], extra_options=_EXTRA_OPTIONS)
    except Exception as exc:
        raise ConverterError(f"onnxruntime static quantization failed: {exc}",
                             fix="check the calibration data, or try --quantize int8-dynamic") from exc
