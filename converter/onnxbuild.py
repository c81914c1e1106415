"""Building the ONNX flavour of a bundle: export, quantize, describe.

Returns a ``Converted`` (model bytes, a predictor over them, tensor specs and runtime needs)
for ``conversion.convert`` to prove and pack. The float32 export's size is the "before" of
the size comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.converted import Converted
from converter.export import float_onnx
from converter.onnxgraph import default_opset, graph_outputs, op_domains, single_input
from converter.predictors import OnnxPredictor
from converter.quantize import quantize_onnx
from converter.source_model import SourceModel


def build_onnx(source: SourceModel, quantize: str, calibration: np.ndarray | None, method: str) -> Converted:
    float_model = float_onnx(source)
    float_bytes = len(float_model.SerializeToString())
    tensor = single_input(float_model, str(source.path))
    model = quantize_onnx(float_model, quantize, input_name=tensor.name, calibration=calibration, method=method)
    data = model.SerializeToString()
    outputs = [t for t in graph_outputs(model) if t.role != "other"]
    predictor = OnnxPredictor(data, {t.name: t.role for t in outputs})
    inputs: tuple[dict[str, Any], ...] = (
        {"name": tensor.name, "dtype": "float32", "shape": [-1, tensor.shape[1]], "role": "other"},
    )
    output_specs = tuple({"name": t.name, "dtype": t.dtype, "shape": [-1, *t.shape[1:]], "role": t.role} for t in outputs)
    runtime = {"opset": default_opset(model), "domains": op_domains(model), "engine": "onnxruntime"}
    return Converted("onnx", data, predictor, inputs, output_specs, runtime, float_bytes)
