"""Train the example model: a small MLP on scikit-learn's wine data, written as the CI pipeline's artifact.

    python examples/ci/train.py OUT_DIR

writes OUT_DIR/model.joblib, OUT_DIR/calibration.csv and OUT_DIR/validation.csv (a held-out
split with a ``label`` column), the three files ``release.sh convert`` reads. The data ships
with scikit-learn (no download). Replace this step with your own training, or set MODEL_FILE
(and DATA_DIR) to take an artifact built elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    frame.columns = [c.replace("/", "_") for c in frame.columns]
    train, held_out = train_test_split(frame, test_size=0.4, random_state=0, stratify=frame["label"])
    calibration, validation = train_test_split(held_out, test_size=0.5, random_state=0, stratify=held_out["label"])
    features = [c for c in frame.columns if c != "label"]
    # Fitted on plain arrays: the converter proves the model on arrays, and a model fitted on a
    # DataFrame warns about missing feature names on every such call.
    model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=0))
    model.fit(train[features].to_numpy(), train["label"].to_numpy())
    accuracy = model.score(validation[features].to_numpy(), validation["label"].to_numpy())
    joblib.dump(model, out / "model.joblib")
    calibration.to_csv(out / "calibration.csv", index=False)
    validation.to_csv(out / "validation.csv", index=False)
    print(f"trained: {out / 'model.joblib'} (validation accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build"))
