"""Loading the model to convert, whatever it was saved as, and saying what it is.

``load_source`` recognises scikit-learn estimators and pipelines, LightGBM and XGBoost sklearn
wrappers (joblib or pickle files) and ONNX files, read here, and Keras ``.keras`` files and TF
SavedModel directories, handed to ``tf_source`` (which imports TensorFlow). The result is a
``SourceModel`` (``source_model``): framework, task, width, class labels and the file's hash,
plus the loaded object the exporters and the original-model predictor need. A Pipeline whose
first step is a ColumnTransformer fitted on a DataFrame is described by its named column
inputs (``SourceModel.inputs``: string columns with their training categories, float32 others);
an ONNX file with several inputs, or one that is not ``[batch, features]``, by its named tensor
inputs (shapes as exported, the first dimension a dynamic batch).

Unpickling runs code from the file: a warning says so on every load. This module does not
convert anything (see ``export`` and ``tflite``).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelNotFoundError, NotAModelError, UnsupportedOpError
from converter.source_model import SourceModel, file_digest
from edgefleet.manifest import TensorSpec

log = logging.getLogger(__name__)

def load_source(path: str | Path) -> SourceModel:
    """Load and describe the model at ``path``: a file by its suffix, a directory as a SavedModel."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file {p} does not exist", fix="check the path (and the current directory)")
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            from converter.tf_source import load_saved_model

            return load_saved_model(p)
        raise NotAModelError(f"{p} is a directory without saved_model.pb",
                             fix="give a model file, or a TensorFlow SavedModel directory")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(p)
    if suffix in (".keras", ".h5"):
        from converter.tf_source import load_keras

        return load_keras(p)
    return _load_pickle(p)


def _load_onnx(path: Path) -> SourceModel:
    import onnx

    from converter.onnxgraph import graph_inputs, graph_outputs, single_input

    try:
        model = onnx.load_model_from_string(path.read_bytes())
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError
        raise NotAModelError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {exc})",
                             fix="re-export the model (e.g. torch.onnx.export) and check it with onnx.checker") from exc
    outputs = graph_outputs(model)
    task = "classification" if any(t.role in ("label", "probabilities") for t in outputs) else "regression"
    labels = _onnx_class_labels(model, outputs) if task == "classification" else None
    sha, size = file_digest(path)
    try:
        tensor = single_input(model, str(path))
    except NotAModelError:  # several inputs, or N-D ones: named tensor inputs (schema 2)
        inputs = _tensor_inputs(graph_inputs(model), path)
        return SourceModel("onnx", path, sha, size, task, len(inputs), labels, None, model, kind="onnx", inputs=inputs)
    return SourceModel("onnx", path, sha, size, task, tensor.shape[1], labels, None, model, kind="onnx")


def _tensor_inputs(graph: list[Any], path: Path) -> tuple[TensorSpec, ...]:
    """The graph's inputs as named tensor specs, batch first. A fixed batch dimension (an export
    without dynamic axes) is refused: the device batches requests, and the graph would refuse."""
    specs = []
    for tensor in graph:
        if tensor.dtype == "string":
            raise UnsupportedOpError(f"{path} takes a string tensor {tensor.name!r} of shape {list(tensor.shape)}",
                                     op="string tensor", fix="take strings as [batch, 1] columns (a DataFrame pipeline)")
        if not tensor.shape or tensor.shape[0] != -1:
            raise NotAModelError(f"{path}: input {tensor.name!r} has shape {list(tensor.shape)}, whose first dimension "
                                 "is not a dynamic batch", fix="export with a dynamic batch axis, e.g. torch.onnx.export("
                                 f"..., dynamic_axes={{{tensor.name!r}: {{0: 'batch'}}}})")
        specs.append(TensorSpec(tensor.name, tensor.dtype, tensor.shape))
    if not specs:
        raise NotAModelError(f"{path} takes no inputs", fix="export a model with at least one input")
    return tuple(specs)


def _onnx_class_labels(model: Any, outputs: list[Any]) -> tuple[str | int, ...]:
    from onnx import numpy_helper

    # skl2onnx keeps the classes in an initializer named "classes" (ArrayFeatureExtractor's table).
    for init in model.graph.initializer:
        if init.name == "classes":
            values = numpy_helper.to_array(init).reshape(-1).tolist()
            return tuple(v.decode() if isinstance(v, bytes) else v for v in values)
    probs = next((t for t in outputs if t.role == "probabilities"), None)
    if probs is not None and probs.shape[-1] > 0:
        return tuple(range(probs.shape[-1]))
    raise NotAModelError("cannot tell the classes of this ONNX classifier",
                         fix="export it with a probabilities output of fixed width [batch, classes]")


def _load_pickle(path: Path) -> SourceModel:
    import joblib

    log.warning("loading %s runs code stored in the file (pickle): convert only files you trust", path)
    try:
        obj = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, ModuleNotFoundError, ImportError, OSError) as exc:
        raise NotAModelError(
            f"{path} is not a model file the converter can read ({type(exc).__name__}: {exc})",
            fix="give a joblib/pickle file of a fitted scikit-learn, LightGBM or XGBoost estimator, "
                "an .onnx file, a .keras file or a SavedModel directory",
        ) from exc
    return describe_estimator(obj, path)


def _framework(estimator: Any) -> str:
    module = type(_final_step(estimator)).__module__
    if module.startswith("lightgbm"):
        return "lightgbm"
    if module.startswith("xgboost"):
        return "xgboost"
    return "sklearn"


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def describe_estimator(obj: Any, path: Path) -> SourceModel:
    """Check that ``obj`` is a fitted estimator and describe it."""
    try:
        from sklearn.base import is_classifier, is_regressor
    except ImportError as exc:  # pragma: no cover - sklearn is part of the convert extra
        raise NotAModelError("reading scikit-learn models needs scikit-learn", fix="pip install 'edgefleet[convert]'") from exc
    if not hasattr(obj, "predict") or not hasattr(obj, "get_params"):
        raise NotAModelError(f"{path} holds a {type(obj).__name__}, not a fitted estimator",
                             fix="save the fitted model itself, e.g. joblib.dump(model, 'model.joblib')")
    framework = _framework(obj)
    if framework != "sklearn" and getattr(obj, "steps", None):
        raise UnsupportedOpError(f"{path}: a scikit-learn Pipeline ending in a {framework} model is not supported",
                                 op=type(_final_step(obj)).__name__,
                                 fix=f"save the {framework} model on its own and apply the preprocessing to the data")
    if is_classifier(obj):
        task = "classification"
    elif is_regressor(obj):
        task = "regression"
    else:
        raise NotAModelError(f"{path} holds a {type(obj).__name__}, which is neither a classifier nor a regressor",
                             fix="convert a fitted classifier, regressor or a Pipeline ending in one")
    width = getattr(obj, "n_features_in_", None)
    if width is None:
        raise NotAModelError(f"{path} holds an unfitted {type(obj).__name__}", fix="fit the model before saving it")
    labels = None
    if task == "classification":
        labels = tuple(c.item() if hasattr(c, "item") else c for c in obj.classes_)
        labels = tuple(str(c) if not isinstance(c, (int, str)) or isinstance(c, bool) else c for c in labels)
    names = getattr(obj, "feature_names_in_", None)
    sha, size = file_digest(path)
    return SourceModel(framework, path, sha, size, task, int(width), labels,
                       tuple(str(n) for n in names) if names is not None else None, obj,
                       kind=type(_final_step(obj)).__name__, inputs=_column_inputs(obj, path))


def _column_inputs(obj: Any, path: Path) -> tuple[TensorSpec, ...] | None:
    """One column input per DataFrame column, for a Pipeline whose first step is a
    ColumnTransformer fitted on a DataFrame; None for every other estimator (a matrix model).

    A column is a string column, with the training categories, when an encoder in its
    transformer learned categories of object dtype; float32 otherwise. A ColumnTransformer that
    picks columns by position, slice or callable, or passes the rest through, is refused: its
    inputs have no names to carry.
    """
    steps = getattr(obj, "steps", None)
    names = getattr(obj, "feature_names_in_", None)
    if not steps or names is None:
        return None
    from sklearn.compose import ColumnTransformer

    first = steps[0][1]
    if not isinstance(first, ColumnTransformer):
        return None
    categories: dict[str, tuple[str, ...]] = {}
    for step_name, transformer, columns in first.transformers_:
        selected = [columns] if isinstance(columns, str) else columns
        if not (isinstance(selected, (list, tuple, np.ndarray)) and all(isinstance(c, str) for c in selected)):
            raise UnsupportedOpError(f"{path}: ColumnTransformer step {step_name!r} selects columns by "
                                     f"{type(columns).__name__}, not by a list of names", op="ColumnTransformer",
                                     fix="select the columns by name, e.g. ('num', StandardScaler(), ['alcohol'])")
        if step_name == "remainder" and len(selected) and not (isinstance(transformer, str) and transformer == "drop"):
            raise UnsupportedOpError(f"{path}: ColumnTransformer passes the remaining column(s) "
                                     f"{', '.join(map(repr, list(selected)[:5]))} through", op="ColumnTransformer",
                                     fix="name every column in a transformer, or use remainder='drop'")
        learned = _learned_categories(transformer, len(selected))
        for column, values in zip(selected, learned or [], strict=False):
            if np.asarray(values).dtype == object:
                categories[str(column)] = tuple(str(v) for v in values if isinstance(v, str))
    return tuple(TensorSpec(str(n), "string", (-1, 1), kind="column", categories=categories[str(n)])
                 if str(n) in categories else TensorSpec(str(n), "float32", (-1, 1), kind="column")
                 for n in names)


def _learned_categories(transformer: Any, width: int) -> list[Any] | None:
    """``categories_`` of the encoder that reads these columns (the transformer itself, or the
    first step of a Pipeline that has them), one array per column; None when there is none."""
    for step in [transformer, *(s for _, s in getattr(transformer, "steps", []))]:
        found = getattr(step, "categories_", None)
        if found is not None and len(found) == width:
            return list(found)
    return None
