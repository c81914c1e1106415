"""``/metrics`` for Prometheus: fleet gauges read at scrape time, ingest counters, API latency.

Each app owns one ``CollectorRegistry`` (``Metrics.registry``), so two apps in one process (tests,
two replicas) never share or collide on metric names. Served in Prometheus text format:

    edgefleet_devices{state}                          devices online, offline, revoked
    edgefleet_devices_running{model,version}          devices whose reported state runs that version
    edgefleet_rollout_devices{rollout,model,version,status}   per rollout: pending/assigned/committed/failed/...
    edgefleet_rollout_info{rollout,model,version,state}       1 per rollout, its state as a label
                                                      (rollouts not finished, and the last 5 finished)
    edgefleet_rollout_stage{rollout,wave,mode,figure}   a wave's shadow/canary figures (issue 18): figure is
                                                      one of STAGE_FIGURES (agreement, requests, p99s...)
    edgefleet_rollout_stage_state{rollout,wave,mode,state}    1 per staged wave: starting, running or its verdict
    edgefleet_model_...{model,version,...}            per model version: predictions, errors, latency
                                                      histogram, feedback, drift PSI per group, devices
                                                      per state (``fleet_server.telemetry.model_metrics``)
    edgefleet_telemetry_received_total, _stored_total, _duplicates_total, _invalid_total, _unknown_device_total
    edgefleet_telemetry_device_dropped_total          batches devices' outboxes dropped (their ``dropped`` fields)
    edgefleet_telemetry_rate                          batches stored per second over the last minute
    edgefleet_telemetry_queue                         messages waiting for the writer
    edgefleet_events_stored_total, edgefleet_events_duplicates_total
    edgefleet_telemetry_acks_sent_total               telemetry_ack commands sent (stored telemetry confirmed)
    edgefleet_desired_resent_total, _resend_limited_total, _resend_failed_total   desired published again to
                                                      devices that reported an older assignment, and the reports
                                                      left unanswered (``fleet_server.rollouts.resend``)
    edgefleet_rollout_report_requests_total           report commands sent to devices in flight that went quiet
                                                      (``fleet_server.rollouts.quiet``)
    edgefleet_device_messages_total{kind}             device messages this replica took (telemetry, events,
                                                      reported; probes not): with shared subscriptions the
                                                      replicas' counts add up to what the devices sent
    edgefleet_ingest_problem{reason}                  1 while the ingest receives nothing: deaf (the
                                                      subscription delivers not even the server's probe) or
                                                      silent (devices enrolled, none heard from); /healthz
                                                      says why and the fix (``fleet_server.telemetry.liveness``)
    edgefleet_device_messages_refused_total{topic,reason}   device messages refused (never stored)
    edgefleet_device_messages_clamped_total{topic,reason}   stored with the server's time (clock_ahead)
    edgefleet_alerts{rule,state}                      episodes pending or firing
    edgefleet_api_request_duration_seconds{method,route,status}   histogram (ASGI middleware)
    edgefleet_broker_auth_total{check,result}         answers of the broker-auth endpoint (check: auth, acl,
                                                      vernemq; result: allow, deny), this replica's

The fleet gauges are read from the database at scrape time (``FleetCollector``), so every
replica reports the same fleet; the ingest counters are this replica's own (sum them).
Route labels are route templates (``/api/v1/devices/{device_id}``), never raw paths, so
label cardinality stays bounded. Refusals are labelled by topic and reason, two closed sets
(``fleet_server.telemetry.validation``), never by device: per device they are counted in the
database and shown by ``GET /api/v1/devices/{id}`` (``fleet_server.telemetry.refusals``).
Unauthenticated, like most exporters: it names models, versions, rollouts and alert rules,
never device ids or secrets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet_server.telemetry.ingest import IngestCounts
from fleet_server.telemetry.liveness import REASONS
from fleet_server.telemetry.model_metrics import (
    GAUGE_TTL_S,
    ModelCounters,
    ModelGauges,
    RegistryVersions,
    gauges_of,
    registry_versions,
)
from fleet_server.telemetry.refusals import totals
from fleet_server.telemetry.views import FleetViews

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# The figures of a stage exported per wave: a closed set, so the label stays bounded. Latencies
# leave in seconds (Prometheus' unit), the stored figures keep milliseconds.
STAGE_FIGURES = ("requests", "compared", "agreed", "skipped", "errors", "agreement", "latency_ratio",
                 "serving_p50_ms", "serving_p99_ms", "candidate_p50_ms", "candidate_p99_ms", "serving_labels",
                 "serving_correct", "candidate_labels", "candidate_correct", "serving_accuracy", "candidate_accuracy")


def stage_figures(figures: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(figure, value) pairs of a stored stage's figures, latencies in seconds; unknown values left out."""
    for name in STAGE_FIGURES:
        value = figures.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if name.endswith("_ms"):
                yield name[:-3] + "_seconds", value / 1000
            else:
                yield name, float(value)


class FleetCollector(Collector):
    def __init__(self, views: FleetViews, ingest: Callable[[], IngestCounts | None],
                 episodes: Callable[[], list[dict[str, Any]]],
                 liveness: Callable[[], list[dict[str, str]] | None] = lambda: None) -> None:
        self.views = views
        self.ingest = ingest
        self.episodes = episodes
        self.liveness = liveness

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._rollouts()
        yield from self._ingest()
        problems = self.liveness()
        if problems is not None:  # None: no MQTT on this replica
            family = GaugeMetricFamily("edgefleet_ingest_problem", "1 while the ingest receives nothing, by reason "
                                       "(deaf: not even the server's own probe; silent: no device heard from)",
                                       labels=["reason"])
            now = {p["reason"] for p in problems}
            for reason in REASONS:
                family.add_metric([reason], 1 if reason in now else 0)
            yield family
        alerts = GaugeMetricFamily("edgefleet_alerts", "Alert episodes by rule and state (pending, firing)",
                                   labels=["rule", "state"])
        for (rule, state), n in sorted(Counter((str(e.get("rule")), str(e.get("state")))
                                               for e in self.episodes()).items()):
            alerts.add_metric([rule, state], n)
        yield alerts

    def _devices(self) -> Iterator[Metric]:
        inventory = self.views.inventory()
        states = GaugeMetricFamily("edgefleet_devices", "Enrolled devices by presence, and revoked ones",
                                   labels=["state"])
        by_state = Counter(state for state, _ in inventory)
        for state in ("online", "offline", "revoked"):
            states.add_metric([state], by_state.get(state, 0))
        yield states
        running = GaugeMetricFamily("edgefleet_devices_running", "Devices running a model version (as reported)",
                                    labels=["model", "version"])
        for (model, version), n in sorted(Counter(item for _, versions in inventory
                                                  for item in versions.items()).items()):
            running.add_metric([model, version], n)
        yield running

    def _rollouts(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily("edgefleet_rollout_devices", "Devices of a rollout by status",
                                    labels=["rollout", "model", "version", "status"])
        info = GaugeMetricFamily("edgefleet_rollout_info", "One per rollout, with its state",
                                 labels=["rollout", "model", "version", "state"])
        stage = GaugeMetricFamily("edgefleet_rollout_stage", "A wave's shadow or canary figures (ratios, counts, "
                                  "seconds)", labels=["rollout", "wave", "mode", "figure"])
        stage_state = GaugeMetricFamily("edgefleet_rollout_stage_state", "1 per staged wave, its stage state",
                                        labels=["rollout", "wave", "mode", "state"])
        for r in self.views.rollout_progress():
            info.add_metric([r["id"], r["model"], r["version"], r["state"]], 1)
            for status, n in sorted(r["devices"].items()):
                devices.add_metric([r["id"], r["model"], r["version"], status], n)
            for s in r.get("stages", ()):
                labels = [r["id"], str(int(s.get("wave", 0)) + 1), str(s.get("mode"))]
                state = s.get("verdict") or ("running" if s.get("opened_at") else "starting")
                stage_state.add_metric([*labels, str(state)], 1)
                for name, value in stage_figures(s.get("figures") or {}):
                    stage.add_metric([*labels, name], value)
        yield devices
        yield info
        yield stage
        yield stage_state

    def _ingest(self) -> Iterator[Metric]:
        counts = self.ingest()
        if counts is None:  # the API runs without MQTT: no ingest on this replica
            return
        for name, value, doc in (
            ("edgefleet_telemetry_received", counts.received, "Telemetry messages received by this replica"),
            ("edgefleet_telemetry_stored", counts.stored, "Telemetry batches stored (first copy)"),
            ("edgefleet_telemetry_duplicates", counts.duplicates, "Telemetry batches already stored, ignored"),
            ("edgefleet_telemetry_invalid", counts.invalid, "Telemetry and event messages refused by the checks"),
            ("edgefleet_telemetry_unknown_device", counts.unknown_device, "Batches from unknown or revoked devices"),
            ("edgefleet_telemetry_device_dropped", counts.device_dropped,
             "Batches devices' outboxes dropped over their cap (sum of the dropped fields)"),
            ("edgefleet_events_stored", counts.events_stored, "Device events stored"),
            ("edgefleet_events_duplicates", counts.events_duplicate, "Device events already stored, ignored"),
            ("edgefleet_telemetry_acks_sent", counts.acks_sent,
             "telemetry_ack commands published to devices (one per device per ingest write)"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        kinds = CounterMetricFamily("edgefleet_device_messages", "Device messages this replica took, by topic kind "
                                    "(replicas sharing a subscription: sum them)", labels=["kind"])
        for kind, n in sorted(counts.by_kind.items()):
            kinds.add_metric([kind], n)
        yield kinds
        refused, clamped = totals(counts.faults)
        for name, doc, values in (
            ("edgefleet_device_messages_refused", "Device messages refused by the ingest checks (or, for "
             "reason store_failed, by the database), by topic and reason; never stored", refused),
            ("edgefleet_device_messages_clamped", "Device messages stored with the server's time because "
             "the device's clock was ahead, by topic", clamped),
        ):
            family = CounterMetricFamily(name, doc, labels=["topic", "reason"])
            for (topic, reason), n in sorted(values.items()):
                family.add_metric([topic, reason], n)
            yield family
        yield GaugeMetricFamily("edgefleet_telemetry_rate", "Telemetry batches stored per second, last minute",
                                value=counts.rate_per_s)
        yield GaugeMetricFamily("edgefleet_telemetry_queue", "Messages waiting for the ingest writer",
                                value=counts.queued)


class Metrics:
    """The app's registry: the fleet collector, the per model version series
    (``fleet_server.telemetry.model_metrics``) and the API latency histogram.

    ``model_counters.add`` is what the ingest calls with the records it stored.
    """

    def __init__(self, views: FleetViews, ingest: Callable[[], IngestCounts | None],
                 episodes: Callable[[], list[dict[str, Any]]], *, gauge_ttl_s: float = GAUGE_TTL_S,
                 liveness: Callable[[], list[dict[str, str]] | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(views, ingest, episodes, liveness))
        self.model_counters = ModelCounters(RegistryVersions(lambda: registry_versions(views.db)))
        self.registry.register(self.model_counters)
        self.registry.register(ModelGauges(lambda: gauges_of(views.version_figures(), views.version_states()),
                                           ttl_s=gauge_ttl_s))
        self.api_latency = Histogram("edgefleet_api_request_duration_seconds", "REST API request latency",
                                     ["method", "route", "status"], registry=self.registry, buckets=LATENCY_BUCKETS)
        # Its latency is in api_latency (route /api/v1/broker/...); every answer there is a 200.
        self.broker_auth = PromCounter("edgefleet_broker_auth", "Broker-auth endpoint answers (fleet_server.broker.auth_api)",
                                       ["check", "result"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class ApiLatency:
    """ASGI middleware timing every HTTP request into ``Metrics.api_latency``."""

    def __init__(self, app: ASGIApp, *, metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, recording)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                # The template, not the path: /devices/{device_id} is one series, not one per device.
                template = getattr(route, "path", None) or "unmatched"
                metrics.api_latency.labels(scope.get("method", "?"), template, str(status[0])).observe(
                    time.perf_counter() - start)
