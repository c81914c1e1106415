"""Exporting a source model to a float32 ONNX graph (skl2onnx and onnxmltools).

Classifiers are exported with ZipMap disabled, so their outputs are a ``label`` tensor and a
``probabilities`` tensor instead of a sequence of maps no small runtime reads. The single
input is named ``input`` and is float32 ``[batch, n_features]``. Free-text fields are
cleared (``onnxgraph.tidy``) so the same model always exports to the same bytes.

This module does not quantize (see ``quantize``) and does not handle Keras (see ``tflite``).
"""

from __future__ import annotations

from typing import Any

import onnx

from converter.errors import NotAModelError, UnsupportedOpError
from converter.onnxgraph import tidy
from converter.source import SourceModel

INPUT_NAME = "input"
# Opset 17 is read by onnxruntime >= 1.13, onnx2tf and every runtime a profile names.
OPSET = 17
ML_OPSET = 3


def float_onnx(source: SourceModel) -> onnx.ModelProto:
    """The source as a float32 ONNX model (an ONNX source is returned tidied, not re-exported)."""
    if source.framework == "onnx":
        model: onnx.ModelProto = source.model
        return tidy(model)
    if source.framework == "sklearn":
        return tidy(_from_sklearn(source))
    if source.framework in ("lightgbm", "xgboost"):
        return tidy(_from_boosting(source))
    raise UnsupportedOpError(f"a {source.framework} model cannot be exported to ONNX here",
                             op=source.kind or source.framework,
                             fix="use --format tflite for Keras and SavedModel sources")


def _initial_types(source: SourceModel) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType

    return [(INPUT_NAME, FloatTensorType([None, source.n_features]))]


def _from_sklearn(source: SourceModel) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    estimator = source.model
    final = estimator.steps[-1][1] if getattr(estimator, "steps", None) else estimator
    options = {id(final): {"zipmap": False}} if source.task == "classification" else None
    try:
        return to_onnx(estimator, initial_types=_initial_types(source), options=options,
                       target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UnsupportedOpError(
            f"skl2onnx cannot convert {source.kind}: {exc}", op=source.kind,
            fix="use an estimator skl2onnx supports (see skl2onnx's supported list), "
                "or export the model to ONNX yourself and convert the .onnx file",
        ) from exc


def _from_boosting(source: SourceModel) -> onnx.ModelProto:
    import onnxmltools

    try:
        if source.framework == "lightgbm":
            return onnxmltools.convert_lightgbm(source.model, initial_types=_initial_types(source),
                                                target_opset=OPSET, zipmap=False)
        return onnxmltools.convert_xgboost(source.model, initial_types=_initial_types(source), target_opset=OPSET)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise NotAModelError(f"onnxmltools cannot convert this {source.framework} model: {exc}",
                             fix=f"check the {source.framework} version against onnxmltools' supported versions") from exc
