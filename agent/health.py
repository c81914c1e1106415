"""The on-device health check: does a staged model reproduce the original model, fast enough?

Before a staged model serves anything, ``check_health`` runs the bundle's golden inputs
through it and compares with the outputs of the ORIGINAL model (golden.json):

    classifiers  top-1 agreement (labels, or argmax of probabilities) >= min_agreement
    regressors   mean |diff| / std(expected) <= max_rel_error
    any model    no NaN, infinite or out-of-range output (agent.probation.output_problems)

then times single-row inferences and compares their p95 with the profile's latency budget. A
round over budget is measured again, up to ``LATENCY_ROUNDS`` rounds, and the best round counts:
a stall (the OS preempting the agent, a busy neighbour process, a GC pause) only ever adds time,
so one slow round says little, while a model that misses its budget misses it every round.
Golden inputs are a list of rows (a single-input model) or, for a model with named inputs, one
array per input name (run with ``run_feeds``): ``[rows, 1]`` lists of a column model's
golden.json, or the N-D arrays of a tensor model's golden.npz (``edgefleet.golden``). An image
input's golden samples are 8-bit pixels, preprocessed here by ``edgefleet.images.normalize``
as a request's PNG would be.
The ``HealthReport`` carries those figures into the ``health_passed`` or ``failed`` event:
this is the on-device benchmark the server shows before a wave advances.

It does not load the model (agent.runtime), decide what happens after a failure
(agent.updater), or read files: the golden document comes in as a dict. The timer is a
parameter so tests can pin latency figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from agent.errors import AgentError
from agent.probation import output_problems
from edgefleet.images import normalize
from edgefleet.inputs import array_dtype
from edgefleet.manifest import Manifest, TensorSpec

DEFAULT_LATENCY_RUNS = 50
LATENCY_ROUNDS = 3  # rounds of latency_runs before a model is failed for latency
_WARMUP_RUNS = 3


class HealthSession(Protocol):
    """What the health check needs from a loaded model (agent.runtime.ModelSession)."""

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


Inputs = np.ndarray | dict[str, np.ndarray]
"""Golden inputs: a float matrix, or arrays by input name (batch first)."""


@dataclass(frozen=True)
class HealthReport:
    """The verdict and the figures behind it. ``reason`` is None when it passed."""

    passed: bool
    reason: str | None
    message: str
    rows: int
    agreement: float | None = None
    rel_error: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_budget_ms: float | None = None
    latency_runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(AgentError):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def check_health(
    session: HealthSession,
    manifest: Manifest,
    golden: Mapping[str, Any],
    *,
    latency_budget_ms: float | None = None,
    latency_runs: int = DEFAULT_LATENCY_RUNS,
    timer: Callable[[], float] = time.perf_counter,
) -> HealthReport:
    """Run the golden samples and the latency probe; never raises for a bad model, only reports."""
    budget = latency_budget_ms if latency_budget_ms is not None else manifest.health_check.latency_budget_ms
    tolerance = manifest.health_check
    try:
        inputs, expected = _golden(golden, manifest)
    except _Failed as exc:
        return HealthReport(False, exc.reason, exc.message, 0, latency_budget_ms=budget)
    rows = _rows(inputs)
    agreement: float | None = None
    rel_error: float | None = None
    try:
        outputs = _run(session, inputs)
        if output_problems(outputs) > 0:
            raise _Failed("bad_outputs", f"{output_problems(outputs)} of {rows} golden rows gave NaN, infinite or out-of-range outputs")
        if manifest.task == "classification":
            agreement = _agreement(outputs, expected, rows)
            if agreement < tolerance.min_agreement:
                raise _Failed("golden_mismatch", f"top-1 agreement with the original model is {agreement:.3f}, "
                                                 f"below the bundle's minimum {tolerance.min_agreement:.3f}")
        else:
            rel_error = _rel_error(outputs, expected)
            if not rel_error <= tolerance.max_rel_error:
                raise _Failed("golden_mismatch", f"relative error against the original model is {rel_error:.4f}, "
                                                 f"above the bundle's maximum {tolerance.max_rel_error:.4f}")
        p50, p95, runs = _latency(session, inputs, latency_runs, timer)
        for _ in range(LATENCY_ROUNDS - 1):
            if p95 <= budget:
                break
            again_p50, again_p95, again_runs = _latency(session, inputs, latency_runs, timer)
            runs += again_runs
            if again_p95 < p95:
                p50, p95 = again_p50, again_p95
    except _Failed as exc:
        return HealthReport(False, exc.reason, exc.message, rows, agreement, rel_error, latency_budget_ms=budget)
    passed = p95 <= budget
    message = (f"p95 single-row latency {p95:.3f} ms is within the {budget:g} ms budget" if passed
               else f"p95 single-row latency {p95:.3f} ms is above the {budget:g} ms budget")
    return HealthReport(passed, None if passed else "latency", message, rows, agreement, rel_error, p50, p95, budget, runs)


def _golden(golden: Mapping[str, Any], manifest: Manifest) -> tuple[Inputs, Mapping[str, Any]]:
    try:
        raw, expected = golden["inputs"], golden["outputs"]
        if not isinstance(expected, Mapping):
            raise TypeError("'outputs' is not an object")
        if isinstance(raw, Mapping):
            return _golden_feeds(raw, manifest), expected
        inputs = np.asarray(raw, dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Failed("golden_malformed", f"golden.json is malformed: {exc}") from exc
    if inputs.ndim != 2 or inputs.shape[0] == 0:
        raise _Failed("golden_malformed", "golden.json needs a non-empty [rows, features] 'inputs' and an 'outputs' object")
    return inputs, expected


def _golden_feeds(raw: Mapping[str, Any], manifest: Manifest) -> dict[str, np.ndarray]:
    names = [spec.name for spec in manifest.inputs]
    if sorted(raw) != sorted(names):
        raise _Failed("golden_malformed", f"golden.json has inputs {sorted(raw)}, the manifest {sorted(names)}")
    # In the dtype a request's parser gives (edgefleet.inputs): golden.npz keeps uint8 images uint8.
    feeds = {spec.name: _replayed(raw[spec.name], spec) if spec.image is not None else
             np.asarray(raw[spec.name], dtype=object if spec.dtype == "string" else array_dtype(spec))
             for spec in manifest.inputs}
    if len({len(v) for v in feeds.values()}) != 1 or not len(feeds[names[0]]):
        raise _Failed("golden_malformed", "golden.json's inputs need the same, non-zero number of rows each")
    return feeds


def _replayed(pixels: Any, spec: TensorSpec) -> np.ndarray:
    """An image input's golden samples are 8-bit pixels: preprocessed here as a request's images
    are (``edgefleet.images.normalize``), so the check runs the device's own preprocessing."""
    assert spec.image is not None
    values = np.asarray(pixels)
    wanted = (spec.image.height, spec.image.width, spec.image.channels)
    if values.dtype != np.uint8 or values.ndim != 4 or values.shape[1:] != wanted:
        raise _Failed("golden_malformed", f"golden samples of image input {spec.name!r} are {values.dtype} of shape "
                                          f"{list(values.shape)}, not 8-bit pixels [n, {', '.join(map(str, wanted))}]")
    return normalize(values, spec.image, array_dtype(spec))


def _rows(inputs: Inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else int(inputs.shape[0])


def _row(inputs: Inputs, i: int) -> Inputs:
    """Row ``i`` of the golden inputs as a batch of one, in the same form."""
    if isinstance(inputs, dict):
        return {name: values[i:i + 1] for name, values in inputs.items()}
    return inputs[i][None, :]


def _run(session: HealthSession, x: Inputs) -> dict[str, np.ndarray]:
    try:
        return session.run_feeds(x) if isinstance(x, dict) else session.run_roles(x)
    except Exception as exc:  # any runtime failure on golden data is a failed check, not a crash
        raise _Failed("inference_error", f"the model failed on the golden inputs: {exc}") from exc


def _label_key(value: Any) -> str:
    # Golden labels come from JSON (int or str); runtime labels are numpy scalars or strings.
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _agreement(outputs: Mapping[str, np.ndarray], expected: Mapping[str, Any], rows: int) -> float:
    if "label" in expected and "label" in outputs:
        want = [_label_key(v) for v in expected["label"]]
        got = [_label_key(v) for v in np.asarray(outputs["label"]).reshape(-1)]
    elif "probabilities" in expected and "probabilities" in outputs:
        want = [str(i) for i in np.argmax(np.asarray(expected["probabilities"], dtype=float), axis=1)]
        got = [str(i) for i in np.argmax(outputs["probabilities"], axis=1)]
    else:
        raise _Failed("golden_malformed", "golden.json and the model share neither 'label' nor 'probabilities'")
    if len(want) != rows or len(got) != rows:
        raise _Failed("golden_malformed", f"golden.json has {len(want)} expected labels for {rows} inputs")
    return sum(w == g for w, g in zip(want, got, strict=True)) / rows


def _rel_error(outputs: Mapping[str, np.ndarray], expected: Mapping[str, Any]) -> float:
    if "value" not in expected or "value" not in outputs:
        raise _Failed("golden_malformed", "a regressor's golden.json and outputs both need 'value'")
    want = np.asarray(expected["value"], dtype=float).reshape(-1)
    got = np.asarray(outputs["value"], dtype=float).reshape(-1)
    if want.shape != got.shape:
        raise _Failed("golden_malformed", f"golden.json has {want.size} expected values, the model gave {got.size}")
    std = float(np.std(want))
    # A constant target has no spread to scale by: fall back to the absolute error.
    return float(np.mean(np.abs(got - want)) / (std if std > 0 else 1.0))


def _latency(session: HealthSession, inputs: Inputs, runs: int,
             timer: Callable[[], float]) -> tuple[float, float, int]:
    runs = max(1, runs)
    total = _rows(inputs)
    for i in range(_WARMUP_RUNS):  # first runs pay for lazy allocation, not for the model
        _run(session, _row(inputs, i % total))
    samples = np.empty(runs)
    for i in range(runs):
        row = _row(inputs, i % total)
        start = timer()
        _run(session, row)
        samples[i] = (timer() - start) * 1000.0
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95)), runs
