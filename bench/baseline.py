"""The baseline the agent is compared with: the plain Flask app people write today.

``python -m bench.baseline MODEL_FILE PORT|unix://PATH`` loads a pickled scikit-learn model with joblib
(or a Keras model with ``keras.models.load_model``) and answers ``POST /predict``
``{"inputs": [[...]]}`` with ``model.predict`` on every request, served by werkzeug's real
threaded server. It is deliberately not tuned: no batching, no ONNX, no worker pool beyond
werkzeug's thread per connection: it is the way the issue says people do it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def make_app(model_file: str) -> Any:
    import numpy as np
    from flask import Flask, jsonify, request

    if model_file.endswith(".keras"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        keras_model = tf.keras.models.load_model(model_file, compile=False)

        def predict(rows: Any) -> Any:
            return np.argmax(keras_model.predict(rows, verbose=0), axis=1)
    else:
        import joblib

        model = joblib.load(model_file)
        predict = model.predict

    app = Flask("edgefleet-bench-baseline")

    @app.post("/predict")
    def predict_route() -> Any:
        rows = np.asarray(request.get_json()["inputs"], dtype=np.float32)
        return jsonify({"predictions": predict(rows).tolist()})

    @app.get("/healthz")
    def health() -> Any:
        return jsonify({"ok": True})

    return app


def main(argv: list[str]) -> int:
    model_file, where = argv[0], argv[1]
    app = make_app(model_file)
    # Access logging per request would slow the baseline down for a reason unrelated to it.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if where.startswith("unix://"):  # werkzeug serves a Unix socket given as the host
        app.run(host=where, port=0, threaded=True)
    else:
        app.run(host="127.0.0.1", port=int(where), threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
