"""Exporting a source model to a float32 ONNX graph (skl2onnx and onnxmltools).

Classifiers are exported with ZipMap disabled, so their outputs are a ``label`` tensor and a
``probabilities`` tensor instead of a sequence of maps no small runtime reads. The single
input is named ``input`` and is float32 ``[batch, n_features]``. Free-text fields are
cleared (``onnxgraph.tidy``) so the same model always exports to the same bytes.

This module does not quantize (see ``quantize``) and does not handle Keras (see ``tflite`` and ``tf_source``).
"""

from __future__ import annotations

import onnx

from converter.errors import NotAModelError, UnsupportedOpError
from converter.onnxgraph import tidy
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
        return _with_default_opset(tidy(_from_sklearn(source)))
    if source.framework in ("lightgbm", "xgboost"):
        return _with_default_opset(tidy(_from_boosting(source)))
    raise UnsupportedOpError(f"a {source.framework} model cannot be exported to ONNX here",
                             op=source.kind or source.framework,
                             fix="use --format tflite for Keras and SavedModel sources")


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
    from skl2onnx.common.data_types import FloatTensorType

    try:
        return to_onnx(estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, source.n_features]))], options=options,
                       target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UnsupportedOpError(
            f"skl2onnx cannot convert {source.kind}: {exc}", op=source.kind,
            fix="use an estimator skl2onnx supports (see skl2onnx's supported list), "
                "or export the model to ONNX yourself and convert the .onnx file",
        ) from exc


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
