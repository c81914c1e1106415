"""Reading and tidying ONNX graphs: tensor specs, output roles, op domains, sub-graphs.

Pure functions over ``onnx.ModelProto``: nothing here runs a model or touches the disk.
Roles follow docs/contracts.md: ``probabilities`` (float [batch, classes]), ``label``
(one class per row) and ``value`` (a regressor's output). Converters disagree on output
names, so roles are read from names first and from dtype and shape second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from converter.errors import NotAModelError, UnsupportedOpError

ML_DOMAIN = "ai.onnx.ml"
_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT32: "int32",
    TensorProto.INT64: "int64", TensorProto.STRING: "string", TensorProto.BOOL: "bool",
}
_PROBABILITY_NAMES = ("probabilities", "output_probability", "probability", "probs")
_LABEL_NAMES = ("label", "output_label", "labels")


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as the manifest wants it: name, dtype, shape (-1 = dynamic), role."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str = "other"


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    ttype = value.type.tensor_type
    dtype = _DTYPES.get(ttype.elem_type)
    if dtype is None:
        raise NotAModelError(f"ONNX tensor {value.name!r} has an element type edgefleet does not carry "
                             f"(type {ttype.elem_type}; a ZipMap sequence of maps?)",
                             fix="export the classifier with ZipMap disabled (skl2onnx options zipmap=False)")
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in ttype.shape.dim)
    return GraphTensor(value.name, dtype, dims)


def graph_inputs(model: onnx.ModelProto) -> list[GraphTensor]:
    """The real inputs (initializers listed as inputs by old exporters are left out)."""
    initializers = {i.name for i in model.graph.initializer}
    return [_tensor(v) for v in model.graph.input if v.name not in initializers]


def _role(tensor: GraphTensor) -> str:
    lowered = tensor.name.lower()
    if lowered in _PROBABILITY_NAMES:
        return "probabilities"
    if lowered in _LABEL_NAMES:
        return "label"
    if tensor.dtype in ("int64", "int32", "string") and len(tensor.shape) <= 2:
        return "label"
    if tensor.dtype.startswith("float") and len(tensor.shape) == 2 and tensor.shape[1] not in (-1, 1):
        return "probabilities"
    return "value"


def graph_outputs(model: onnx.ModelProto) -> list[GraphTensor]:
    """Graph outputs with their roles. A graph with a label or probabilities output is a classifier."""
    outputs = [_tensor(v) for v in model.graph.output]
    with_roles = [GraphTensor(t.name, t.dtype, t.shape, _role(t)) for t in outputs]
    if any(t.role in ("label", "probabilities") for t in with_roles):
        # In a classifier, a stray float output is not a regression value.
        return [t if t.role != "value" else GraphTensor(t.name, t.dtype, t.shape, "other") for t in with_roles]
    return with_roles


def single_input(model: onnx.ModelProto, source: str) -> GraphTensor:
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].shape[1] <= 0:
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in inputs)
        raise NotAModelError(f"{source} takes inputs {shapes}; the converter handles one 2-D [batch, features] input",
                             fix="export the model with a single float input of shape [batch, n_features]")
    return inputs[0]


def op_domains(model: onnx.ModelProto) -> list[str]:
    return sorted({n.domain or "ai.onnx" for n in model.graph.node})


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ml_ops(model: onnx.ModelProto) -> list[str]:
    """Op types from the ai.onnx.ml domain (tree ensembles, ArrayFeatureExtractor, ZipMap...)."""
    return sorted({n.op_type for n in model.graph.node if n.domain == ML_DOMAIN})


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop free-text fields that exporters fill with paths, timestamps or object ids, and put
    the opset imports in one canonical order (the standard domain first, then by name).

    Byte-identical output for identical input is what makes bundles reproducible. The order
    matters because skl2onnx lists the domains by iterating a Python ``set`` of (domain,
    version) pairs, whose order follows the per-process string hash (PYTHONHASHSEED): the
    digits MLP came out as ``ai.onnx.ml, ""`` instead of ``"", ai.onnx.ml`` in 1 process in 40
    (PYTHONHASHSEED=30 every time), and onnxruntime's quantization keeps that order, so two
    conversions in two processes gave two sha256s. ONNX gives the list no meaning beyond a set.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.doc_string = ""
    out.graph.doc_string = ""
    out.graph.name = "edgefleet"
    for node in out.graph.node:
        node.doc_string = ""
    opsets = sorted(out.opset_import, key=lambda o: (o.domain not in ("", "ai.onnx"), o.domain, o.version))
    ordered = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in opsets]
    del out.opset_import[:]
    out.opset_import.extend(ordered)
    return out


def standard_subgraph(model: onnx.ModelProto, input_name: str, output_names: Sequence[str], target: str) -> onnx.ModelProto:
    """The part of ``model`` that computes ``output_names`` from ``input_name``, standard ops only.

    Raises UnsupportedOpError naming the first non-standard op when the part needs one (a tree
    ensemble's ai.onnx.ml ops, say), because ``target`` cannot run it.
    """
    extractor = onnx.utils.Extractor(model)
    try:
        sub = extractor.extract_model([input_name], list(output_names))
    except Exception as exc:  # onnx raises bare Exceptions for unknown tensor names
        raise NotAModelError(f"cannot isolate outputs {list(output_names)} of the ONNX graph: {exc}") from exc
    for node in sub.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(
                f"op {node.domain}.{node.op_type} (node {node.name or node.op_type!r}) cannot be converted to {target}: "
                "it takes standard ONNX ops only",
                op=f"{node.domain}.{node.op_type}",
                fix="use --format onnx with a profile that allows ONNX (e.g. rpi4-64, generic-x86_64), "
                    "or train a neural network or linear model for TFLite",
            )
    return tidy(sub)
