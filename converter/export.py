"""Exporting a source model to a float32 ONNX graph (skl2onnx and onnxmltools).

Classifiers are exported with ZipMap disabled, so their outputs are a ``label`` tensor and a
``probabilities`` tensor instead of a sequence of maps no small runtime reads. A matrix
model's single input is named ``input`` and is float32 ``[batch, n_features]``. A model with
named column inputs (``SourceModel.inputs``) gets one ``[batch, 1]`` input per column, float
or string. Its OneHotEncoders answer a category they never saw with all zeros (ONNX
``zeros=1``), also where the source was fitted with ``handle_unknown="error"`` and would
raise: a device must answer, not fail (``unseen_categories`` says so for the report).
Free-text fields are cleared (``onnxgraph.tidy``) so the same model always exports to the
same bytes.

Keras models are exported by Keras itself (``keras_onnx``). This module does not quantize (see ``quantize``).
"""

from __future__ import annotations

import onnx

from converter.errors import NotAModelError, UnsupportedOpError
from converter.onnxgraph import ML_DOMAIN, tidy
from converter.source_model import SourceModel

INPUT_NAME = "input"
# Opset 17 is read by onnxruntime >= 1.13, onnx2tf and every runtime a profile names.
OPSET = 17
ML_OPSET = 3
# onnxmltools' LightGBM and XGBoost converters stop at opset 15 (onnxmltools 1.16).
BOOSTING_OPSET = 15


def float_onnx(source: SourceModel) -> onnx.ModelProto:
    """The source as a float32 ONNX model (an ONNX source is returned tidied, not re-exported)."""
    if source.framework == "onnx":
        model: onnx.ModelProto = source.model
        return tidy(model)
    if source.framework == "sklearn":
        return tidy(_with_default_opset(_from_sklearn(source)))
    if source.framework in ("lightgbm", "xgboost"):
        return tidy(_with_default_opset(_from_boosting(source)))
    if source.framework in ("keras", "savedmodel"):
        from converter.keras_onnx import keras_onnx

        return tidy(_with_default_opset(keras_onnx(source)))
    raise UnsupportedOpError(f"a {source.framework} model cannot be exported to ONNX here",
                             op=source.kind or source.framework, fix="use --format tflite")


def _with_default_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare the standard domain even when only ai.onnx.ml ops are used (a lone LinearRegressor):
    onnxruntime's quantizer refuses a model without it."""
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    return model


def _from_sklearn(source: SourceModel) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    estimator = source.model
    final = estimator.steps[-1][1] if getattr(estimator, "steps", None) else estimator
    options = {id(final): {"zipmap": False}} if source.task == "classification" else None
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if source.inputs is None:
        initial_types = [(INPUT_NAME, FloatTensorType([None, source.n_features]))]
    else:
        initial_types = [(spec.name, StringTensorType([None, 1]) if spec.dtype == "string" else FloatTensorType([None, 1]))
                         for spec in source.inputs]
    try:
        model = to_onnx(estimator, initial_types=initial_types, options=options,
                        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UnsupportedOpError(
            f"skl2onnx cannot convert {source.kind}: {exc}", op=source.kind,
            fix="use an estimator skl2onnx supports (see skl2onnx's supported list), "
                "or export the model to ONNX yourself and convert the .onnx file",
        ) from exc
    if source.inputs is not None:
        _answer_unseen_categories(model)
    return model


def _answer_unseen_categories(model: onnx.ModelProto) -> None:
    """Set ``zeros=1`` on every OneHotEncoder: an unseen category encodes as all zeros instead of
    failing the run (skl2onnx writes 0 for handle_unknown="error"). Column models only, so the
    bytes of every matrix model stay as they were."""
    for node in model.graph.node:
        if node.op_type == "OneHotEncoder" and node.domain == ML_DOMAIN:
            zeros = next((a for a in node.attribute if a.name == "zeros"), None)
            if zeros is None:
                node.attribute.append(onnx.helper.make_attribute("zeros", 1))
            else:
                zeros.i = 1


def unseen_categories(source: SourceModel) -> str | None:
    """What the converted model does with a category its source never saw, where that differs
    from the source (a OneHotEncoder fitted with handle_unknown="error"); None otherwise."""
    if source.inputs is None or source.framework != "sklearn":
        return None
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    first = source.model.steps[0][1]
    if not isinstance(first, ColumnTransformer):
        return None
    for _, transformer, _ in first.transformers_:
        for step in [transformer, *(s for _, s in getattr(transformer, "steps", []))]:
            if isinstance(step, OneHotEncoder) and step.handle_unknown == "error":
                return "encoded as all zeros (the source model would raise)"
    return None


def _from_boosting(source: SourceModel) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    # onnxmltools checks the input type's class: skl2onnx's FloatTensorType is refused.
    initial_types = [(INPUT_NAME, FloatTensorType([None, source.n_features]))]
    try:
        if source.framework == "lightgbm":
            return onnxmltools.convert_lightgbm(source.model, initial_types=initial_types,
                                                target_opset=BOOSTING_OPSET, zipmap=False)
        return onnxmltools.convert_xgboost(source.model, initial_types=initial_types, target_opset=BOOSTING_OPSET)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise NotAModelError(f"onnxmltools cannot convert this {source.framework} model: {exc}",
                             fix=f"check the {source.framework} version against onnxmltools' supported versions") from exc
