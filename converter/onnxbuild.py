"""Building the ONNX flavour of a bundle: export, quantize, describe.

Returns a ``Converted`` (model bytes, a predictor over them, tensor specs and runtime needs)
for ``conversion.convert`` to prove and pack. The float32 export's size is the "before" of
the size comparison. A matrix model has one ``[batch, features]`` float input; a model with
named column inputs has one input per column the exported graph reads, described by the
source's column specs (kind, dtype, categories).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx

from converter.converted import Converted
from converter.export import float_onnx
from converter.onnxgraph import default_opset, graph_inputs, graph_outputs, op_domains, single_input
from converter.predictors import Batch, OnnxPredictor
from converter.quantize import quantize_onnx
from converter.source_model import SourceModel


def _inputs(source: SourceModel, float_model: onnx.ModelProto) -> tuple[dict[str, Any], ...]:
    if source.inputs is None:
        tensor = single_input(float_model, str(source.path))
        return ({"name": tensor.name, "dtype": "float32", "shape": [-1, tensor.shape[1]], "role": "other"},)
    # An exporter drops a column no transformer reads (remainder="drop"): the bundle asks for what the graph takes.
    read = {t.name for t in graph_inputs(float_model)}
    return tuple(spec.to_dict() for spec in source.inputs if spec.name in read)


def build_onnx(source: SourceModel, quantize: str, calibration: Batch | None, method: str) -> Converted:
    float_model = float_onnx(source)
    float_bytes = len(float_model.SerializeToString())
    inputs = _inputs(source, float_model)
    feeds: Mapping[str, Any] | None = None
    if isinstance(calibration, Mapping):
        feeds = {spec["name"]: calibration[spec["name"]] for spec in inputs}
    elif calibration is not None:
        feeds = {inputs[0]["name"]: calibration}
    model = quantize_onnx(float_model, quantize, calibration=feeds, method=method)
    data = model.SerializeToString()
    outputs = [t for t in graph_outputs(model) if t.role != "other"]
    predictor = OnnxPredictor(data, {t.name: t.role for t in outputs})
    output_specs = tuple({"name": t.name, "dtype": t.dtype, "shape": [-1, *t.shape[1:]], "role": t.role} for t in outputs)
    runtime = {"opset": default_opset(model), "domains": op_domains(model), "engine": "onnxruntime"}
    return Converted("onnx", data, predictor, inputs, output_specs, runtime, float_bytes)
