"""Per model version series for ``/metrics``: what the devices ran (counters) and how it is going (gauges).

Counters, from the telemetry this replica stored (``ModelCounters``, fed by the ingest after each
commit, the first copy of a batch only; sum the replicas in PromQL, as for the ingest counters):

    edgefleet_model_predictions_total{model,version}          requests the devices' models ran
    edgefleet_model_errors_total{model,version,kind}          failed requests by kind (inference, input, other)
    edgefleet_model_latency_seconds{model,version}            histogram of the devices' request latency
                                                              (buckets edgefleet.telemetry.LATENCY_BUCKETS_S;
                                                              _bucket and _count, no _sum: devices send counts)
    edgefleet_model_feedback_labels_total{model,version}      ground-truth labels devices received
    edgefleet_model_feedback_correct_total{model,version}     ... that matched the prediction

Gauges, read from the database at scrape time (``ModelGauges``, computed at most every
``GAUGE_TTL_S``), the figures the API and the alert rules use over the telemetry window:

    edgefleet_model_drift_psi_max{model,version,by,group}    worst feature PSI of a group's merged inputs
    edgefleet_model_drift_rows{model,version,by,group}       input rows merged into that figure
    edgefleet_model_feedback_accuracy_ratio{model,version}   feedback accuracy over the window (0-1)
    edgefleet_model_devices{model,version,state}             devices reporting a version: online,
                                                              updating (online, an update in flight), offline

``by`` is ``fleet``, ``profile`` or ``label:NAME``, ``group`` the drift API's group name
(``fleet``, the profile, ``NAME=value``): the drift gauge equals ``max_psi`` of
``GET /api/v1/models/NAME/VERSION/drift?by=...`` and the value a ``drift`` alert rule judges.

Bounded label sets, so no series lives forever: counters only for versions in the registry
(a device cannot invent series by naming models) and for the ``VERSIONS_PER_MODEL`` versions of
each model that reported last (older ones are dropped; Prometheus reads the reset if one comes
back); error kinds from a closed set; drift groups of a label with more than
``MAX_LABEL_GROUPS`` values (a label per device, say) are left out, the fleet and profile
groups are always there; gauges exist only for versions with telemetry in the window or
devices reporting them. Never a device id.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from edgefleet.telemetry import LATENCY_BUCKETS_S, ModelRecord
from fleet_server.db import Database
from fleet_server.tables import ModelRow
from fleet_server.telemetry.views import VersionFigures

VERSIONS_PER_MODEL = 5
MAX_LABEL_GROUPS = 32
GAUGE_TTL_S = 5.0
ERROR_KINDS = frozenset({"inference", "input", "timeout"})
"""Error kinds agents report; any other is counted as ``other`` (kinds are a device's text)."""

Known = Callable[[str, str], bool]


@dataclass
class _Counts:
    predictions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    labels: int = 0
    correct: int = 0


class ModelCounters(Collector):
    """Counters per model version of the records stored by this replica. Thread-safe.

    ``known(model, version)``: whether the version is in the registry (cached by the caller).
    """

    def __init__(self, known: Known, *, versions_per_model: int = VERSIONS_PER_MODEL) -> None:
        self.known = known
        self.versions_per_model = versions_per_model
        self._lock = threading.Lock()
        self._counts: OrderedDict[tuple[str, str], _Counts] = OrderedDict()

    def add(self, records: Iterable[ModelRecord]) -> None:
        for record in records:
            key = (record.model, record.version)
            if key not in self._counts and not self.known(*key):
                continue
            with self._lock:
                counts = self._counts.get(key)
                if counts is None:
                    counts = self._counts[key] = _Counts()
                    same_model = [k for k in self._counts if k[0] == record.model]
                    for old in same_model[:-self.versions_per_model]:
                        del self._counts[old]
                self._counts.move_to_end(key)  # the versions reporting last are the ones kept
                counts.predictions += record.count
                for kind, n in record.errors.items():
                    counts.errors[kind if kind in ERROR_KINDS else "other"] += n
                for i, n in enumerate(record.latency_buckets):
                    counts.buckets[i] += n
                counts.labels += record.feedback.labels
                counts.correct += record.feedback.correct

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = sorted((key, _Counts(c.predictions, Counter(c.errors), list(c.buckets), c.labels, c.correct))
                              for key, c in self._counts.items())
        names = ["model", "version"]
        predictions = CounterMetricFamily("edgefleet_model_predictions",
                                          "Requests devices' models ran (telemetry stored by this replica)",
                                          labels=names)
        errors = CounterMetricFamily("edgefleet_model_errors", "Failed requests on devices, by kind",
                                     labels=[*names, "kind"])
        latency = Metric("edgefleet_model_latency_seconds",
                         "Devices' request latency (bucket counts from telemetry; no _sum: devices send counts)",
                         "histogram")
        labels = CounterMetricFamily("edgefleet_model_feedback_labels", "Ground-truth labels devices received",
                                     labels=names)
        correct = CounterMetricFamily("edgefleet_model_feedback_correct",
                                      "Ground-truth labels that matched the device's prediction", labels=names)
        for (model, version), c in snapshot:
            predictions.add_metric([model, version], c.predictions)
            for kind, n in sorted(c.errors.items()):
                errors.add_metric([model, version, kind], n)
            running = 0
            for bound, n in zip(LATENCY_BUCKETS_S, c.buckets, strict=False):
                running += n
                latency.add_sample("edgefleet_model_latency_seconds_bucket",
                                   {"model": model, "version": version, "le": repr(float(bound))}, running)
            total = sum(c.buckets)
            latency.add_sample("edgefleet_model_latency_seconds_bucket",
                               {"model": model, "version": version, "le": "+Inf"}, total)
            latency.add_sample("edgefleet_model_latency_seconds_count", {"model": model, "version": version}, total)
            labels.add_metric([model, version], c.labels)
            correct.add_metric([model, version], c.correct)
        yield from (predictions, errors, latency, labels, correct)


class RegistryVersions:
    """``known(model, version)`` for ``ModelCounters``: the registry's versions, read again at most
    every ``retry_s`` when a version is not among them (it may be pushed after devices report)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str]]], *, retry_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.retry_s = retry_s
        self.monotonic = monotonic
        self._versions: frozenset[tuple[str, str]] = frozenset()
        self._read_at: float | None = None

    def __call__(self, model: str, version: str) -> bool:
        if (model, version) in self._versions:
            return True
        now = self.monotonic()
        if self._read_at is None or now - self._read_at >= self.retry_s:
            self._read_at = now
            self._versions = frozenset(self.read())
        return (model, version) in self._versions


def registry_versions(db: Database) -> list[tuple[str, str]]:
    """Every (model, version) in the registry, yanked ones included (devices may still run them)."""
    with db.session() as session:
        return [(name, version) for name, version in session.execute(select(ModelRow.name, ModelRow.version))]


# ---- gauges ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DriftFigure:
    """One group's drift of a model version: the figure a drift alert rule judges."""

    model: str
    version: str
    by: str
    group: str
    max_psi: float
    rows: int


@dataclass(frozen=True)
class Gauges:
    drift: Sequence[DriftFigure] = ()
    accuracy: Sequence[tuple[str, str, float]] = ()
    devices: Sequence[tuple[str, str, str, int]] = ()  # model, version, state, devices


def gauges_of(figures: Iterable[VersionFigures], states: Mapping[tuple[str, str, str], int]) -> Gauges:
    """The gauges from ``FleetViews.version_figures`` and ``FleetViews.version_states``: drift of the
    groups with data (what ``drift_observations`` hands the alert rules), accuracy where labels came."""
    figures = list(figures)
    return Gauges(
        drift=[DriftFigure(f.model, f.version, by, r.group, r.max_psi, r.rows)
               for f in figures for by, r in f.reports if r.band != "no data"],
        accuracy=[(f.model, f.version, f.totals.accuracy) for f in figures if f.totals.accuracy is not None],
        devices=[(model, version, state, n) for (model, version, state), n in sorted(states.items())])


def bounded(figures: Iterable[DriftFigure], max_label_groups: int = MAX_LABEL_GROUPS) -> list[DriftFigure]:
    """The figures without those of a label that splits a version into more than ``max_label_groups``."""
    figures = list(figures)
    groups = Counter((f.model, f.version, f.by) for f in figures)
    return [f for f in figures if not f.by.startswith("label:") or groups[(f.model, f.version, f.by)] <= max_label_groups]


class ModelGauges(Collector):
    """The gauges above, from ``read()`` at most every ``ttl_s`` (a scrape reads the whole window)."""

    def __init__(self, read: Callable[[], Gauges], *, ttl_s: float = GAUGE_TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, Gauges] | None = None

    def gauges(self) -> Gauges:
        with self._lock:  # one reader at a time: concurrent scrapes share the figures
            now = self.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                self._cached = (now, self.read())
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        gauges = self.gauges()
        group = ["model", "version", "by", "group"]
        psi = GaugeMetricFamily("edgefleet_model_drift_psi_max",
                                "Worst feature PSI of a group's merged inputs over the telemetry window",
                                labels=group)
        rows = GaugeMetricFamily("edgefleet_model_drift_rows", "Input rows merged into the drift figure",
                                 labels=group)
        for f in bounded(gauges.drift):
            psi.add_metric([f.model, f.version, f.by, f.group], f.max_psi)
            rows.add_metric([f.model, f.version, f.by, f.group], f.rows)
        accuracy = GaugeMetricFamily("edgefleet_model_feedback_accuracy_ratio",
                                     "Feedback accuracy of a model version over the telemetry window (0-1)",
                                     labels=["model", "version"])
        for model, version, value in gauges.accuracy:
            accuracy.add_metric([model, version], value)
        devices = GaugeMetricFamily("edgefleet_model_devices",
                                    "Enrolled devices reporting a model version, by state (online, updating, "
                                    "offline)", labels=["model", "version", "state"])
        for model, version, state, n in gauges.devices:
            devices.add_metric([model, version, state], n)
        yield from (psi, rows, accuracy, devices)
