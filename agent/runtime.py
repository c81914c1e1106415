"""Inference sessions: a verified slot in, real-number outputs by role out.

``load_session(slot, profile)`` picks the runtime by the bundle's format: ONNX Runtime for
``onnx`` (execution providers from the profile, in order, falling back down the list with one
log line per provider this build or machine lacks; thread counts from the profile, except that
a small CPU model runs on one intra-op thread where one is as fast, measured at load time:
``agent.threads``), and for
``tflite`` the first importable of ``ai_edge_litert``, ``tflite_runtime``, ``tensorflow.lite``
(``$EDGEFLEET_TFLITE_RUNTIME`` names one to force). Every session answers ``run_roles(x)``
(one ``[n, features]`` matrix, for a single-input model) and ``run_feeds(feeds)`` (one array
per manifest input, by name: a model with named column inputs, strings as object arrays)
with ``{"probabilities": [n, classes], "label": [n]}`` for classifiers (the label from
``class_labels`` by argmax when the model gives only probabilities) or ``{"value": [n]}`` for
regressors; int8 tensors are quantized and dequantized with the manifest's scale and zero
point, so callers always see real numbers.

Runtimes are imported inside the loaders: importing this module costs only numpy. This module
does not validate request input (``edgefleet.inputs``) or hold sessions for serving
(``agent.serving``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from agent import threads
from agent.errors import InferenceError
from agent.slots import Slot
from edgefleet.manifest import Manifest, Quantization, TensorSpec
from edgefleet.onnx_options import exact_int8
from edgefleet.profiles import Profile

log = logging.getLogger("agent.runtime")

CPU_PROVIDER = "CPUExecutionProvider"
TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
_ROLES = ("probabilities", "label", "value")
# TFLite's converter names a signature's tensors "serving_default_NAME:0".
_SIGNATURE_NAME = re.compile(r"^serving_default_|:\d+$")


class ModelSession(Protocol):
    """What serving, health checks and batch prediction need from a loaded model."""

    manifest: Manifest
    slot: Slot
    providers: tuple[str, ...]
    runtime: str

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float matrix [n, features]; outputs keyed by role."""
        ...

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one array per manifest input (by name, batch first); outputs keyed by role."""
        ...

    def close(self) -> None: ...


def load_session(slot: Slot, profile: Profile) -> ModelSession:
    """Load a verified slot with the runtime its format needs, configured by the profile.

    A model with an image input also gets the image decoders warmed up (``edgefleet.images.warm_up``),
    so its first request is not the one that pays for importing them, inside probation's p95.
    """
    fmt = slot.manifest.format
    session: ModelSession
    if fmt == "onnx":
        if profile.runtime != "onnxruntime":
            log.info("profile %s prefers %s but %s is an ONNX bundle: using onnxruntime",
                     profile.name, profile.runtime, slot.manifest.ref)
        session = OnnxSession(slot, profile)
    elif fmt == "tflite":
        session = TFLiteSession(slot, profile)
    else:
        raise InferenceError(f"{slot.manifest.ref} has format {fmt!r}, which this agent cannot run",
                             fix="convert the model to onnx or tflite")
    for spec in slot.manifest.inputs:
        if spec.image is not None:
            from edgefleet.images import warm_up

            warm_up(spec.image)
    return session


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the profile's providers into (usable, missing), keeping order; the CPU is always last."""
    usable = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if CPU_PROVIDER not in usable:
        usable.append(CPU_PROVIDER)
    return usable, missing


# -- output roles (pure) -------------------------------------------------------------------------
def quantize(x: np.ndarray, q: Quantization, dtype: np.dtype[Any]) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / q.scale + q.zero_point), info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, q: Quantization) -> np.ndarray:
    return ((x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)).astype(np.float32)


def roles_from_outputs(manifest: Manifest, raw: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Shape a runtime's raw outputs (by manifest output name, already real numbers) into roles."""
    out: dict[str, np.ndarray] = {}
    for spec in manifest.outputs:
        if spec.role not in _ROLES or spec.name not in raw:
            continue
        value = np.asarray(raw[spec.name])
        if spec.role == "probabilities":
            out["probabilities"] = value.astype(np.float32, copy=False).reshape(n, -1)
        else:
            out[spec.role] = value.reshape(n)
    if manifest.task == "classification" and "label" not in out and "probabilities" in out:
        labels = np.asarray(manifest.class_labels)
        out["label"] = labels[np.argmax(out["probabilities"], axis=1)]
    if manifest.task == "regression" and "value" in out:
        out["value"] = out["value"].astype(np.float32, copy=False)
    if manifest.task == "classification" and "label" not in out:
        raise InferenceError(f"{manifest.ref} produced neither a label nor probabilities",
                             fix="rebuild the bundle: its output roles do not match the model")
    return out


def _as_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if x.ndim != 2:
        raise InferenceError(f"input must be a 2-D [rows, features] matrix, got {x.ndim} dimensions")
    dtype = np.dtype(spec.dtype) if spec.dtype in ("float32", "float64", "float16") else np.dtype(np.float32)
    return np.ascontiguousarray(x, dtype=dtype)


# Manifest dtype -> what a runtime takes for it; strings are object arrays of str.
_FEED_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "float16": np.dtype(np.float16),
    "int64": np.dtype(np.int64), "int32": np.dtype(np.int32), "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_), "string": np.dtype(object)}


def _feed_dtype(spec: TensorSpec) -> np.dtype[Any]:
    # An int8/uint8 input with a scale and zero point takes real values: the session quantizes them.
    if spec.quantization is not None and spec.dtype in ("int8", "uint8"):
        return np.dtype(np.float32)
    return _FEED_DTYPES.get(spec.dtype, np.dtype(np.float32))


def as_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], ref: str) -> tuple[dict[str, np.ndarray], int]:
    """The feeds in each input's dtype (real values for a quantized input), checked for names,
    ranks and one common row count."""
    missing = [spec.name for spec in specs if spec.name not in feeds]
    if missing:
        raise InferenceError(f"{ref} needs input(s) {', '.join(map(repr, missing[:5]))}, which were not given")
    out: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in specs:
        value = np.asarray(feeds[spec.name])
        if value.ndim != len(spec.shape) or (rows is not None and len(value) != rows):
            raise InferenceError(f"input {spec.name!r} of {ref} has shape {list(value.shape)}, expected "
                                 f"{list(spec.shape)} with the same rows as the other inputs")
        rows = len(value)
        dtype = _feed_dtype(spec)
        out[spec.name] = np.asarray(value, dtype=object) if dtype.kind == "O" else np.ascontiguousarray(value, dtype=dtype)
    return out, rows or 0


# -- ONNX Runtime ---------------------------------------------------------------------------------
class OnnxSession:
    """An ONNX Runtime session. ``run`` is thread-safe (ORT sessions are)."""

    runtime = "onnxruntime"

    def __init__(self, slot: Slot, profile: Profile) -> None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError as exc:
            raise InferenceError("ONNX bundles need onnxruntime, which is not installed",
                                 fix="pip install 'edgefleet[agent]'") from exc
        self.slot = slot
        self.manifest = slot.manifest
        usable, missing = choose_providers(profile.execution_providers, ort.get_available_providers())
        for provider in missing:
            log.warning("execution provider %s is not available in this onnxruntime build; falling back to %s",
                        provider, _next_usable(profile.execution_providers, usable, provider))
        def build(intra_op_threads: int) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = profile.inter_op_threads
            options.log_severity_level = 3  # ORT's own provider warnings would duplicate ours
            # Requests arrive one row at a time with gaps between them: spinning intra-op workers
            # burn 6-74 us of CPU after every run (measured) that the device's API thread needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            exact_int8(options)  # the products the converter's proof computed, on any x86 CPU
            try:
                return ort.InferenceSession(str(slot.model_path), sess_options=options, providers=usable)
            except Exception as exc:  # onnxruntime raises its own unexported exception types
                raise InferenceError(f"onnxruntime cannot load {self.manifest.ref}: {exc}",
                                     fix="check that the bundle was built for this profile (edgefleet bundle inspect)") from exc

        self._session = build(profile.intra_op_threads)
        self.intra_op_threads = profile.intra_op_threads
        self.providers = tuple(self._session.get_providers())
        if profile.intra_op_threads > 1 and self.providers == (CPU_PROVIDER,):
            self._tune_threads(build)
        for provider in usable:
            if provider not in self.providers:
                # Present in the build but unusable here (no GPU, no driver): ORT dropped it.
                log.warning("execution provider %s could not start on this machine; falling back to %s",
                            provider, self.providers[0] if self.providers else CPU_PROVIDER)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        unnamed = sorted({i.name for i in self._session.get_inputs()} - {s.name for s in self.manifest.inputs})
        if len(self.manifest.inputs) > 1 and unnamed:
            raise InferenceError(f"{self.manifest.ref}: the model takes input(s) {', '.join(map(repr, unnamed[:5]))} "
                                 "its manifest does not list", fix="rebuild the bundle with `edgefleet convert`")

    def _tune_threads(self, build: Any) -> None:
        """Serve with one intra-op thread where that runs a single row as fast (``agent.threads``)."""
        if self.slot.model_path.stat().st_size > threads.MAX_TUNED_BYTES:
            return
        feeds = threads.sample_feeds([(i.name, i.type, i.shape) for i in self._session.get_inputs()])
        if feeds is None:
            return
        single = build(1)

        def timed(session: Any) -> float:
            outputs = self._outputs_of(session)
            return threads.seconds_per_run(lambda: session.run(outputs, feeds))

        try:
            seconds = {1: timed(single), self.intra_op_threads: timed(self._session)}
        except Exception:  # a model that refuses zeros: keep the profile's setting
            log.debug("intra-op thread measurement failed for %s", self.manifest.ref, exc_info=True)
            return
        chosen = threads.choose(seconds)
        log.info("%s: %d intra-op thread(s) (single row: %.1f us with 1, %.1f us with %d)", self.manifest.ref,
                 chosen, 1e6 * seconds[1], 1e6 * seconds[self.intra_op_threads], self.intra_op_threads)
        if chosen == 1:
            self._session, self.intra_op_threads = single, 1

    @staticmethod
    def _outputs_of(session: Any) -> list[str]:
        return [o.name for o in session.get_outputs()]

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        matrix = _as_input(x, self.manifest.input)
        return self._run({self._input: matrix}, matrix.shape[0])

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked, rows = as_feeds(feeds, self.manifest.inputs, self.manifest.ref)
        return self._run(checked, rows)

    def _run(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise InferenceError(f"session for {self.manifest.ref} is closed")
        try:
            values = session.run(self._outputs, feeds)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed to run {self.manifest.ref}: {exc}") from exc
        return roles_from_outputs(self.manifest, dict(zip(self._outputs, values, strict=True)), rows)

    def close(self) -> None:
        self._session = None


def _next_usable(requested: Sequence[str], usable: Sequence[str], provider: str) -> str:
    after = requested[requested.index(provider) + 1:]
    return next((p for p in after if p in usable), CPU_PROVIDER)


# -- TFLite / LiteRT -------------------------------------------------------------------------------
def tflite_interpreter_class() -> tuple[Any, str]:
    """The first importable TFLite interpreter and the module it came from."""
    forced = os.environ.get("EDGEFLEET_TFLITE_RUNTIME")
    candidates = [m for m in TFLITE_MODULES if forced is None or m.split(".")[0] == forced.split(".")[0]]
    if not candidates:
        raise InferenceError(f"EDGEFLEET_TFLITE_RUNTIME={forced} names no known TFLite interpreter",
                             fix="set it to ai_edge_litert, tflite_runtime or tensorflow, or unset it "
                             "(pip install 'edgefleet[litert]' provides ai_edge_litert)")
    errors = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return module.Interpreter, name
    raise InferenceError("TFLite bundles need a TFLite interpreter and none could be imported ("
                         + "; ".join(errors) + ")", fix="pip install 'edgefleet[litert]' (or tflite-runtime with numpy<2)")


class TFLiteSession:
    """A TFLite interpreter. Interpreters are not thread-safe, so every run holds a lock.

    Each manifest input is matched to an interpreter input by name, else by position (converters
    rename tensors: onnx2tf writes e.g. ``serving_default_input:0``); a batch resizes every input's
    first dimension, and a model whose batch cannot be resized runs one sample at a time.
    """

    def __init__(self, slot: Slot, profile: Profile) -> None:
        interpreter_class, module = tflite_interpreter_class()
        self.slot = slot
        self.manifest = slot.manifest
        self.runtime = module.split(".")[0]
        self.providers: tuple[str, ...] = (self.runtime,)
        try:
            self._interp = interpreter_class(model_path=str(slot.model_path), num_threads=profile.intra_op_threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise InferenceError(f"{module} cannot load {self.manifest.ref}: {exc}", fix="rebuild the bundle") from exc
        self._lock = threading.Lock()
        details = self._interp.get_input_details()
        if len(details) != len(self.manifest.inputs):
            raise InferenceError(f"{self.manifest.ref}: the TFLite model takes {len(details)} input(s), its manifest "
                                 f"lists {len(self.manifest.inputs)}", fix="rebuild the bundle with `edgefleet convert`")
        self._ins = self._match(self.manifest.inputs, details)
        first = self._ins[0][1]["shape"]
        self._batch = int(first[0]) if len(first) else 1
        self._out_details = self._match(self.manifest.outputs, self._interp.get_output_details())

    @staticmethod
    def _match(specs: Sequence[TensorSpec], details: list[dict[str, Any]]) -> list[tuple[TensorSpec, dict[str, Any]]]:
        # Converters rename tensors: TFLite's own converter writes "serving_default_NAME:0" for a
        # signature input, onnx2tf e.g. "Identity". Match by name (either form), else by order:
        # with several inputs the order of a .tflite file's inputs need not be the signature's.
        by_name = {d["name"]: d for d in details}
        by_name.update({_SIGNATURE_NAME.sub("", d["name"]): d for d in details if _SIGNATURE_NAME.search(d["name"])})
        pairs = []
        for i, spec in enumerate(specs):
            detail = by_name.get(spec.name) or (details[i] if i < len(details) else None)
            if detail is not None:
                pairs.append((spec, detail))
        return pairs

    def _quant(self, spec: TensorSpec, detail: Mapping[str, Any]) -> Quantization | None:
        if spec.quantization is not None:
            return spec.quantization
        scale, zero = detail.get("quantization", (0.0, 0))
        return Quantization(float(scale), int(zero)) if scale else None

    def _resize(self, n: int) -> bool:
        if n == self._batch:
            return True
        try:
            for _, detail in self._ins:
                shape = [n, *(int(d) for d in detail["shape"][1:])]
                self._interp.resize_tensor_input(detail["index"], shape, strict=False)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError):
            return False
        self._batch = n
        return True

    def _invoke(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec, detail in self._ins:
            x = feeds[spec.name]
            dtype = np.dtype(detail["dtype"])
            if dtype.kind in "iu" and x.dtype.kind == "f":
                q = self._quant(spec, detail)
                if q is None:
                    raise InferenceError(f"{self.manifest.ref} has an integer input without a scale and zero point",
                                         fix="rebuild the bundle with the input's quantization in the manifest")
                x = quantize(x, q, dtype)
            self._interp.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=dtype))
        self._interp.invoke()
        raw = {}
        for spec, detail in self._out_details:
            value = self._interp.get_tensor(detail["index"])
            if np.dtype(detail["dtype"]).kind in "iu" and spec.role != "label":
                q = self._quant(spec, detail)
                value = dequantize(value, q) if q is not None else value.astype(np.float32)
            raw[spec.name] = value
        return raw

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        matrix = _as_input(x, TensorSpec(self.manifest.input.name, "float32", (-1, -1)))
        return self._run({self.manifest.input.name: matrix}, matrix.shape[0])

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked, rows = as_feeds(feeds, self.manifest.inputs, self.manifest.ref)
        return self._run(checked, rows)

    def _run(self, feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        with self._lock:
            if self._interp is None:
                raise InferenceError(f"session for {self.manifest.ref} is closed")
            try:
                if self._resize(n):
                    raw = self._invoke(feeds)
                else:  # a fixed-batch model: one sample at a time
                    self._resize(1)
                    parts = [self._invoke({name: x[i:i + 1] for name, x in feeds.items()}) for i in range(n)]
                    raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
            except InferenceError:
                raise
            except Exception as exc:
                raise InferenceError(f"{self.runtime} failed to run {self.manifest.ref}: {exc}") from exc
        return roles_from_outputs(self.manifest, raw, n)

    def close(self) -> None:
        with self._lock:
            self._interp = None
