"""The competent peers the agent is compared with: onnxruntime behind FastAPI and behind Flask.

``python -m bench.peers KIND BUNDLE (--port PORT | --uds PATH)`` serves ``POST /predict``
from the bundle's own model file, KIND one of:

    fastapi    FastAPI on uvicorn (uvloop, httptools, one worker), the way a careful person
               deploys it: a plain ``Request`` route (no pydantic model per row), orjson when
               it is installed
    flask      Flask on werkzeug's threaded server (one thread per connection)

Both build their ``InferenceSession`` with the agent's options for the bench profile
(``session_options``: intra-op and inter-op threads, no spinning) and answer with the agent's
response content (model, version, request_id, predictions, probabilities), so the only
difference left is the serving stack. They check the rows' shape and nothing else, as such an
app would. A bundle whose input is declared an image (the bench's ``image`` model) is asked
with one PNG/JPEG picture per request as the body, as the agent is (``Content-Type:
image/png``); the peer then decodes and preprocesses it with ``edgefleet.images.preprocess``
and the bundle's own ``ImageSpec``, the very code the agent runs, so the decoding work on both
sides is the same and only the serving stack differs. Nothing here times anything;
``bench.inference`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# At module level: FastAPI resolves the route's annotations (strings here) in this module's globals.
from fastapi import FastAPI, Request, Response

from edgefleet.errors import InputError
from edgefleet.images import preprocess

KINDS = ("fastapi", "flask")

try:  # a careful FastAPI deployment uses orjson; the peer is meant to be strong
    import orjson

    def dumps(document: Any) -> bytes:
        return orjson.dumps(document)

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the test extra
    def dumps(document: Any) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode()

    loads = json.loads


def session_options(profile_name: str) -> Any:
    """The ``SessionOptions`` the agent builds for ``profile_name`` (kept equal to agent/runtime.py's)."""
    import onnxruntime as ort

    from edgefleet.profiles import load_profile

    profile = load_profile(profile_name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.intra_op_threads
    options.inter_op_num_threads = profile.inter_op_threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Predictor:
    """The bundle's model in an ``InferenceSession``; ``__call__`` turns a JSON body into the answer's bytes."""

    def __init__(self, bundle: Path, profile: str) -> None:
        import onnxruntime as ort

        from edgefleet.bundle import read_bundle

        read = read_bundle(bundle)
        manifest = read.manifest
        self.model, self.version = manifest.name, str(manifest.version)
        self.session = ort.InferenceSession(read.model_bytes, session_options(profile),
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.features = self.session.get_inputs()[0].shape[1]
        # An image input: the body is the picture's bytes, preprocessed as the agent does.
        self.image = manifest.inputs[0].image if manifest.inputs[0].kind == "image" else None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    def __call__(self, body: bytes) -> bytes | None:
        """The answer, or None for rows of the wrong shape or a picture that is not one (a 422)."""
        if self.image is not None:
            try:
                rows = preprocess([body], self.image)
            except InputError:
                return None
        else:
            rows = np.asarray(loads(body)["inputs"], dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != self.features:
                return None
        values = self.session.run(self.outputs, {self.input: rows})
        if len(values) >= 2:  # scikit-learn classifiers: label, then probabilities
            labels, probabilities = values[0], values[1]
        else:                 # one softmax output (the CNN): the label is its argmax, as the agent's
            probabilities = values[0]
            labels = probabilities.argmax(axis=1)
        return dumps({"model": self.model, "version": self.version,
                      "request_id": f"{self._prefix}{next(self._ids):016x}",
                      "predictions": labels.tolist(), "probabilities": probabilities.tolist()})


def fastapi_app(predictor: Predictor) -> Any:
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        answer = predictor(await request.body())
        if answer is None:
            return Response(b'{"detail":"wrong shape"}', status_code=422, media_type="application/json")
        return Response(answer, media_type="application/json")

    @app.get("/healthz")
    async def health() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    return app


def flask_app(predictor: Predictor) -> Any:
    from flask import Flask, request
    from flask import Response as FlaskResponse

    app = Flask("edgefleet-bench-peer")

    @app.post("/predict")
    def predict() -> Any:
        answer = predictor(request.get_data())
        if answer is None:
            return FlaskResponse(b'{"detail":"wrong shape"}', status=422, mimetype="application/json")
        return FlaskResponse(answer, mimetype="application/json")

    @app.get("/healthz")
    def health() -> Any:
        return FlaskResponse(b'{"ok":true}', mimetype="application/json")

    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--profile", default="generic-x86_64")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--uds", type=Path)
    args = parser.parse_args(argv)
    predictor = Predictor(args.bundle, args.profile)
    if args.kind == "fastapi":
        import uvicorn

        config: dict[str, Any] = {"uds": str(args.uds)} if args.uds else {"host": "127.0.0.1", "port": args.port}
        uvicorn.run(fastapi_app(predictor), loop="uvloop", http="httptools", workers=1, access_log=False,
                    log_level="warning", **config)
    else:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        host = f"unix://{args.uds}" if args.uds else "127.0.0.1"
        flask_app(predictor).run(host=host, port=args.port or 0, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
