"""Small example models trained on data that ships with scikit-learn (never a download).

``write_example(directory, kind=...)`` trains a seeded model and writes it as joblib, with a
calibration CSV (features only, from the training rows) and a validation CSV (held-out rows
plus a ``label`` column). Used by the demo, by ``tests/support/bundles.py`` and by the
converter's own tests. The same kind always gives the same model and files.

    digits-mlp         MLPClassifier(256, 128) on digits (64 features, 10 classes)
    digits-small-mlp   MLPClassifier(32,) on digits: quick, for tests that convert many times
    iris-logreg        LogisticRegression on iris (4 features, 3 classes)
    breast-cancer-rf   RandomForestClassifier (tree ensemble: ONNX only, never TFLite)
    breast-cancer-lgbm LightGBM classifier (needs lightgbm)
    diabetes-mlp       MLPRegressor on diabetes (10 features, regression)
    diabetes-ridge     Ridge regression on diabetes
    wine-pipeline      Pipeline(ColumnTransformer[StandardScaler on wine's 13 numeric columns,
                       OneHotEncoder on a string column "region"], GradientBoostingClassifier),
                       fitted on a pandas DataFrame (needs pandas); the CSVs have a header and
                       "region" as text

The ``region`` column is synthesised from a seeded generator, leaning on the class so it
carries some signal; nothing is downloaded.

``write_image_example(directory)`` trains the image model (needs TensorFlow, extra
``tflite-convert``): a small Keras CNN on the digits upscaled to 32x32 RGB (``digit_images``:
each 8x8 digit made an 8-bit image, enlarged 4x, grey in all three channels, then read as
``pixel / 255``, so a PNG of it reads back to the same array), input ``image`` of shape
``(None, 32, 32, 3)``, ten classes. It writes ``digits-cnn.keras``, ``digits-cnn-calibration.npz``
(training images, no labels) and ``digits-cnn-validation.npz`` (held-out images and ``y``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import OptionsError

SEED = 0
LABELS_COLUMN = "label"
CALIBRATION_ROWS = 300


@dataclass(frozen=True)
class ExampleFiles:
    model_path: Path
    calibration_csv: Path
    validation_csv: Path
    labels_column: str


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target, [str(n) for n in data.feature_names]


def _iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target, [n.replace(" (cm)", "").replace(" ", "_") for n in data.feature_names]


def _breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, data.target, [n.replace(" ", "_") for n in data.feature_names]


def _diabetes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return data.data, data.target, [str(n) for n in data.feature_names]


def _mlp(hidden: tuple[int, ...]) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=SEED)
    return make


def _scaled(estimator: Callable[[], Any]) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), estimator())
    return make


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500)


def _forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=20, max_depth=6, random_state=SEED)


def _lgbm() -> Any:
    from edgefleet.extras import require

    lightgbm = require("lightgbm", "test", "the LightGBM example")
    return lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, random_state=SEED, verbose=-1, n_jobs=1)


def _mlp_regressor() -> Any:
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(hidden_layer_sizes=(32,), max_iter=2000, random_state=SEED)


def _ridge() -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=0.1)


REGIONS = ("east", "north", "west")


def _wine_frame() -> tuple[Any, np.ndarray, list[str]]:
    from sklearn.datasets import load_wine

    from edgefleet.extras import require

    pd = require("pandas", "convert", "the wine-pipeline example")
    data = load_wine()
    names = [str(n).replace("/", "_") for n in data.feature_names]
    frame = pd.DataFrame(data.data, columns=names)
    rng = np.random.default_rng(SEED)
    # Each class favours one region (60%), so the column carries signal, as a real one would.
    weights = np.full((3, len(REGIONS)), 0.2) + 0.4 * np.eye(3)
    frame["region"] = [REGIONS[rng.choice(len(REGIONS), p=weights[t])] for t in data.target]
    return frame, data.target, [*names, "region"]


def _wine_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_wine
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [str(n).replace("/", "_") for n in load_wine().feature_names]
    columns = ColumnTransformer([("num", StandardScaler(), numeric),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"])])
    return Pipeline([("prep", columns), ("model", GradientBoostingClassifier(n_estimators=50, random_state=SEED))])


# kind -> (dataset loader, estimator factory); a loader returns a float array, or a pandas
# DataFrame for a model fitted on one.
KINDS: dict[str, tuple[Callable[[], tuple[Any, np.ndarray, list[str]]], Callable[[], Any]]] = {
    "digits-mlp": (_digits, _mlp((256, 128))),
    "digits-small-mlp": (_digits, _mlp((32,))),
    "iris-logreg": (_iris, _scaled(_logreg)),
    "breast-cancer-rf": (_breast_cancer, _forest),
    "breast-cancer-lgbm": (_breast_cancer, _lgbm),
    "diabetes-mlp": (_diabetes, _scaled(_mlp_regressor)),
    "diabetes-ridge": (_diabetes, _ridge),
    "wine-pipeline": (_wine_frame, _wine_pipeline),
}


def _write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in row])


IMAGE_SIZE = 32
IMAGE_INPUT = "image"
IMAGE_EPOCHS = 4


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``[n, 32, 32, 3]`` float32 images in [0, 1] (multiples of 1/255) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.round(data.images / 16.0 * 255.0).astype(np.uint8)  # 8x8, 0..16 -> 8-bit grey
    scale = IMAGE_SIZE // pixels.shape[1]
    large = pixels.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscaling
    rgb = np.repeat(large[..., None], 3, axis=3)
    return (rgb.astype(np.float32) / np.float32(255.0)), data.target.astype(np.int64)


def _digits_cnn() -> Any:
    from converter.tf_runtime import keras as keras3

    keras = keras3()
    keras.utils.set_random_seed(SEED)
    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name=IMAGE_INPUT)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


@dataclass(frozen=True)
class ImageExampleFiles:
    model_path: Path
    calibration_npz: Path
    validation_npz: Path
    labels_key: str


def write_image_example(directory: str | Path) -> ImageExampleFiles:
    """Train the digits CNN and write digits-cnn.keras with calibration and validation .npz files."""
    from sklearn.model_selection import train_test_split

    images, target = digit_images()
    x_train, x_val, y_train, y_val = train_test_split(images, target, test_size=0.25, random_state=SEED)
    model = _digits_cnn()
    model.fit(x_train, y_train, epochs=IMAGE_EPOCHS, batch_size=32, verbose=0, shuffle=True)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = ImageExampleFiles(out / "digits-cnn.keras", out / "digits-cnn-calibration.npz",
                              out / "digits-cnn-validation.npz", "y")
    model.save(files.model_path)
    np.savez(files.calibration_npz, **{IMAGE_INPUT: x_train[:CALIBRATION_ROWS]})
    np.savez(files.validation_npz, **{IMAGE_INPUT: x_val, "y": y_val})
    return files


def write_example(directory: str | Path, *, kind: str = "digits-mlp") -> ExampleFiles:
    """Train the ``kind`` example and write model.joblib, calibration.csv and validation.csv."""
    if kind not in KINDS:
        raise OptionsError(f"unknown example {kind!r}", fix=f"use one of {', '.join(KINDS)}")
    import joblib
    from sklearn.model_selection import train_test_split

    load, make = KINDS[kind]
    features, target, names = load()
    frame = not isinstance(features, np.ndarray)
    if not frame:
        features = features.astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(features, target, test_size=0.25, random_state=SEED)
    model = make().fit(x_train, y_train)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = ExampleFiles(out / f"{kind}.joblib", out / f"{kind}-calibration.csv", out / f"{kind}-validation.csv",
                         LABELS_COLUMN)
    joblib.dump(model, files.model_path)
    if frame:  # a DataFrame model: pandas writes the text columns as text
        x_train[:CALIBRATION_ROWS].to_csv(files.calibration_csv, index=False, lineterminator="\n")
        x_val.assign(**{LABELS_COLUMN: y_val}).to_csv(files.validation_csv, index=False, lineterminator="\n")
        return files
    _write_csv(files.calibration_csv, names, x_train[:CALIBRATION_ROWS])
    _write_csv(files.validation_csv, [*names, LABELS_COLUMN], np.column_stack([x_val, y_val]))
    return files
