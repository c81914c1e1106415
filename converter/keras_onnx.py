"""Exporting a Keras model to a float32 ONNX graph: Keras 3's own ``model.export(format="onnx")``.

Under the TensorFlow backend Keras hands a traced ``tf.function`` to tf2onnx (1.17, which
works with the pinned TensorFlow 2.21, numpy 2 and protobuf 7; Keras patches what tf2onnx
still lacks for numpy 2). Why this road and not another: docs/converter.md, "Keras to ONNX".

The export is given an input signature with a dynamic batch and the source's input names
(``tf_source``), so the ONNX inputs are the bundle's inputs. tf2onnx names tensors and nodes
with per-process counters (``unk__20``, ``convolution__6``) and calls the output
``Identity:0``; ``canonical`` renames them by position, and the one output after its role
(``probabilities`` or ``value``), so the same model always exports to the same bytes.

A SavedModel directory with one input is exported the same way, its ``serving_default``
signature wrapped in ``keras.layers.TFSMLayer``; one with several inputs is refused (the layer
passes one). This module does not quantize (``quantize``) and runs nothing but the export.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from converter.errors import ConverterError, UnsupportedOpError
from converter.source_model import SourceModel
from converter.tf_runtime import EXTRA, keras, quiet_native_output, tensorflow

OPSET = 17


def _described(source: SourceModel) -> list[tuple[str, str, tuple[int | None, ...]]]:
    """(name, dtype, shape without the batch) of each input, in the model's order."""
    if source.inputs is not None:
        return [(spec.name, spec.dtype, tuple(None if d == -1 else d for d in spec.shape[1:])) for spec in source.inputs]
    if source.framework == "keras":
        name = str(source.model.inputs[0].name)
    else:  # a SavedModel signature: its one input's keyword
        name = str(next(iter(source.model.structured_input_signature[1])))
    return [(name, "float32", (source.n_features,))]


def _signature(tf: Any, source: SourceModel) -> list[Any]:
    """Keras' input_signature: one spec (one input) or a list of specs (several), batch dynamic."""
    specs = [tf.TensorSpec((None, *shape), tf.as_dtype(dtype), name=name) for name, dtype, shape in _described(source)]
    return specs if len(specs) == 1 else [specs]


def _keras_model(source: SourceModel, keras: Any) -> Any:
    """The Keras model to export: the source itself, or a SavedModel's serving_default signature
    wrapped in a Keras layer (``keras.layers.TFSMLayer``), which takes one input."""
    if source.framework == "keras":
        return source.model
    described = _described(source)
    if len(described) != 1:
        raise UnsupportedOpError(
            f"{source.path} is a SavedModel with {len(described)} inputs; the converter exports SavedModels to ONNX "
            "through keras.layers.TFSMLayer, which passes one input", op="SavedModel inputs",
            fix="convert the .keras file the SavedModel came from, or use --format tflite")
    name, dtype, shape = described[0]
    layer = keras.layers.TFSMLayer(str(source.path), call_endpoint="serving_default")
    inputs = keras.Input(shape, dtype=dtype, name=name)
    outputs = layer(inputs)
    if isinstance(outputs, dict):  # a signature returns its outputs by name; tf_source checked there is one
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def keras_onnx(source: SourceModel) -> onnx.ModelProto:
    """The Keras source as a float32 ONNX model (opset 17), names canonical, output named by role."""
    from edgefleet.extras import require

    tf = tensorflow()
    model = _keras_model(source, keras())
    with quiet_native_output():
        require("tf2onnx", EXTRA, "exporting Keras models to ONNX")
    with tempfile.TemporaryDirectory(prefix="edgefleet-keras-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with quiet_native_output(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf2onnx's numpy deprecations
                model.export(str(path), format="onnx", input_signature=_signature(tf, source), opset_version=OPSET,
                             verbose=False)
            onnx_model = onnx.load_model(path)
        except Exception as exc:  # tf2onnx raises ValueError/RuntimeError naming the op it cannot map
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConverterError(f"Keras could not export {source.path} to ONNX (tf2onnx): {first}",
                                 fix="use --format tflite, or replace the layer tf2onnx cannot map") from exc
    role = "probabilities" if source.task == "classification" else "value"
    return canonical(onnx_model, role)


def canonical(model: onnx.ModelProto, output_name: str) -> onnx.ModelProto:
    """``model`` with deterministic names: its one output ``output_name``, every other tensor
    ``t<i>`` and nodes ``n<i>_<Op>`` in graph order, initializers ``w<i>`` in order of first use
    (and listed so), dynamic dimensions
    ``batch`` (the first) or ``d<axis>``; value_info dropped (it only carries the old names).
    Graph inputs keep their names: they are the bundle's inputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if len(graph.output) != 1:
        raise ConverterError(f"internal: the Keras export has {len(graph.output)} outputs, expected one",
                             fix="report this as a bug")
    names = {value.name: value.name for value in graph.input}
    names[graph.output[0].name] = output_name
    # Initializers by first use: tf2onnx lists them in an order that changes from process to
    # process (string hashing), and shares equal constants (a Clip's 0 and 6) between nodes.
    initializers = {init.name for init in graph.initializer}
    used = [name for node in graph.node for name in node.input if name in initializers]
    first_use: dict[str, int] = {}
    for name in [*used, *(init.name for init in graph.initializer)]:
        if name not in names and name not in first_use:
            first_use[name] = len(first_use)
            names[name] = f"w{first_use[name]}"
    order = sorted(graph.initializer, key=lambda init: first_use.get(init.name, -1))
    counter = 0
    for node in graph.node:
        for name in node.output:
            if name and name not in names:
                names[name] = f"t{counter}"
                counter += 1
    sorted_inits = [onnx.TensorProto() for _ in order]
    for target, init in zip(sorted_inits, order, strict=True):
        target.CopyFrom(init)
        target.name = names[init.name]
    del graph.initializer[:]
    graph.initializer.extend(sorted_inits)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}_{node.op_type}"
        node.input[:] = [names.get(name, name) if name else name for name in node.input]
        node.output[:] = [names.get(name, name) if name else name for name in node.output]
    for node in graph.node:  # a Loop's or If's body may read outer tensors by their old names
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_reads(sub, names)
    for value in [*graph.input, *graph.output]:
        value.name = names[value.name]
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch" if axis == 0 else f"d{axis}"
    del graph.value_info[:]
    return out


def _rename_reads(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [names.get(name, name) if name else name for name in node.input]
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_reads(sub, names)
