"""The agent's ``GET /metrics``: its serving counters in the Prometheus text format, written by hand.

    edgefleet_agent_serving{model,version}                      1 per model version serving now
    edgefleet_agent_predictions_total{model,version}            requests the model ran (failures included)
    edgefleet_agent_errors_total{model,version,kind}            failed requests by kind (inference, input)
    edgefleet_agent_latency_seconds{model,version}              histogram, edgefleet.telemetry.LATENCY_BUCKETS_S
    edgefleet_agent_feedback_labels_total{model,version}        ground-truth labels received
    edgefleet_agent_feedback_correct_total{model,version}       ... that matched the prediction
    edgefleet_agent_feedback_accuracy_ratio{model,version}      rolling accuracy over the last labels (0-1)
    edgefleet_agent_drift_rows{model,version}                   input rows in the drift window
    edgefleet_agent_drift_psi_max{model,version}                worst feature PSI over the window
    edgefleet_agent_drift_output_psi{model,version}             PSI of the predicted classes over the window
    edgefleet_agent_outbox_rows                                 telemetry batches waiting for the broker (or the server)
    edgefleet_agent_outbox_unconfirmed                          ... the broker took, not yet confirmed stored by the server
    edgefleet_agent_outbox_resent_total                         batches published again: no confirmation in time
    edgefleet_agent_shadow_compared_total{model,version,serving}  mirrored requests both versions answered
    edgefleet_agent_shadow_agreed_total{model,version,serving}    ... on which the candidate agreed
    edgefleet_agent_shadow_skipped_total{model,version,serving}   sampled requests shed under load
    edgefleet_agent_shadow_errors_total{model,version,serving}    mirrored requests the candidate failed
    edgefleet_agent_shadow_agreement_ratio{model,version,serving} agreed / compared (0-1)
    edgefleet_agent_mqtt_suback_refusals_total                  SUBACKs that refused a subscription (0x80)
    edgefleet_agent_mqtt_subscribed                             1 while desired and commands are both granted

The shadow families (issue 18) exist while a candidate is in a shadow stage: ``version`` is
the candidate's, ``serving`` the version that answered; they count from the stage's start.

Counters run from the agent's start (``agent.metrics.Metrics.totals``); the drift gauges are the
figures ``edgefleet agent status`` shows (``Reporter.drift_summary``), present only once the
window holds enough rows for a score to mean something. Series are per model version, for the
last ``agent.metrics.KEEP_VERSIONS`` versions of each model: bounded on a device that goes
through many updates. No device id: Prometheus's ``instance`` label names the scraped device.

Why by hand: ``prometheus_client`` is not in ``edgefleet[agent]`` and the text format (0.0.4) is
a few lines: ``# HELP``/``# TYPE``, then ``name{label="value"} number``, label values escaped
(backslash, double quote, newline). ``render`` is pure: families in, bytes out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.metrics import Accuracy, Totals
from agent.shadow import ShadowTotals
from edgefleet.telemetry import LATENCY_BUCKETS_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edgefleet_agent_"

Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric: its name, type and help, and its samples (suffix, labels, value)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float, suffix: str = "") -> None:
        self.samples.append((suffix, labels, value))

    @classmethod
    def single(cls, name: str, kind: str, help_: str, value: float) -> Family:
        """A metric of one sample without labels (a counter or gauge of the whole agent)."""
        family = cls(PREFIX + name, kind, help_)
        family.add({}, value)
        return family


def escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            lines.append(f"{family.name}{suffix}{{{text}}} {number(value)}" if text
                         else f"{family.name}{suffix} {number(value)}")
    return ("\n".join(lines) + "\n").encode()


def _histogram(family: Family, labels: Labels, buckets: Sequence[int], total_s: float) -> None:
    running = 0
    for bound, n in zip(LATENCY_BUCKETS_S, buckets, strict=False):
        running += n
        family.add({**labels, "le": repr(float(bound))}, running, "_bucket")  # "1.0", as Go and client libraries write it
    count = sum(buckets)
    family.add({**labels, "le": "+Inf"}, count, "_bucket")
    family.add(labels, total_s, "_sum")
    family.add(labels, count, "_count")


def agent_families(*, serving: Mapping[str, str], totals: Sequence[Totals], accuracies: Sequence[Accuracy],
                   drift: Mapping[tuple[str, str], Mapping[str, Any] | None],
                   outbox_rows: int | None, shadow: Sequence[ShadowTotals] = (),
                   confirmation: tuple[int, int] | None = None,
                   subscriptions: tuple[int, bool] | None = None) -> list[Family]:
    """The families of ``/metrics``: ``serving`` is model -> version serving now, ``drift`` the
    reporter's ``drift_summary`` per (model, version), ``confirmation`` the reporter's (unconfirmed,
    resent) once the server confirms stored telemetry (docs/telemetry.md "Store and forward"),
    ``subscriptions`` the MQTT link's (SUBACK refusals, subscribed) when it has one."""
    info = Family(PREFIX + "serving", "gauge", "1 for each model version this agent serves now")
    for model, version in sorted(serving.items()):
        info.add({"model": model, "version": version}, 1)
    predictions = Family(PREFIX + "predictions_total", "counter",
                         "Requests a model version ran since the agent started (failed runs included)")
    errors = Family(PREFIX + "errors_total", "counter",
                    "Failed requests by kind: inference (the runtime failed), input (refused before the model)")
    latency = Family(PREFIX + "latency_seconds", "histogram", "Time to answer a request a model version ran")
    labels_total = Family(PREFIX + "feedback_labels_total", "counter", "Ground-truth labels received")
    correct_total = Family(PREFIX + "feedback_correct_total", "counter",
                           "Ground-truth labels that matched the prediction")
    for t in totals:
        labels = {"model": t.model, "version": t.version}
        predictions.add(labels, t.requests)
        for kind, n in sorted(t.errors.items()):
            errors.add({**labels, "kind": kind}, n)
        _histogram(latency, labels, t.buckets, t.latency_s)
        labels_total.add(labels, t.labels)
        correct_total.add(labels, t.correct)
    accuracy = Family(PREFIX + "feedback_accuracy_ratio", "gauge",
                      "Share of the last feedback labels that matched the prediction (0-1)")
    for a in accuracies:
        if a.value is not None:
            accuracy.add({"model": a.model, "version": a.version}, a.value)
    rows = Family(PREFIX + "drift_rows", "gauge", "Input rows in the drift window")
    psi = Family(PREFIX + "drift_psi_max", "gauge",
                 "Worst feature PSI of the inputs over the drift window against the bundle's reference "
                 "(shown once the window holds enough rows)")
    output = Family(PREFIX + "drift_output_psi", "gauge", "PSI of the predicted classes over the drift window")
    for (model, version), summary in sorted(drift.items()):
        if summary is None:
            continue
        labels = {"model": model, "version": version}
        rows.add(labels, summary["rows"])
        if summary.get("max_psi") is not None:
            psi.add(labels, summary["max_psi"])
        if summary.get("output_psi") is not None:
            output.add(labels, summary["output_psi"])
    families = [info, predictions, errors, latency, labels_total, correct_total, accuracy, rows, psi, output]
    if shadow:
        families += _shadow_families(shadow)
    if outbox_rows is not None:
        families.append(Family.single("outbox_rows", "gauge", "Telemetry batches stored and not yet acknowledged",
                                      outbox_rows))
    if confirmation is not None:
        families += [
            Family.single("outbox_unconfirmed", "gauge",
                          "Telemetry batches the broker acknowledged that the server has not confirmed storing",
                          confirmation[0]),
            Family.single("outbox_resent_total", "counter",
                          "Telemetry batches published again because no confirmation came in time", confirmation[1])]
    if subscriptions is not None:
        families += [
            Family.single("mqtt_suback_refusals_total", "counter",
                          "SUBACKs in which the broker refused a subscription (0x80); the agent subscribes again",
                          subscriptions[0]),
            Family.single("mqtt_subscribed", "gauge",
                          "1 while the broker has granted both desired and commands on the current connection",
                          1 if subscriptions[1] else 0)]
    return families


def _shadow_families(shadow: Sequence[ShadowTotals]) -> list[Family]:
    compared = Family(PREFIX + "shadow_compared_total", "counter",
                      "Requests mirrored to a shadow candidate that both versions answered")
    agreed = Family(PREFIX + "shadow_agreed_total", "counter",
                    "Mirrored requests on which the candidate agreed with the serving version")
    skipped = Family(PREFIX + "shadow_skipped_total", "counter",
                     "Requests sampled for the shadow candidate but shed because the agent was busy")
    errors = Family(PREFIX + "shadow_errors_total", "counter", "Mirrored requests the shadow candidate failed on")
    ratio = Family(PREFIX + "shadow_agreement_ratio", "gauge",
                   "Share of the compared requests on which the candidate agreed (0-1)")
    for t in sorted(shadow, key=lambda t: (t.model, t.version)):
        labels = {"model": t.model, "version": t.version, "serving": t.serving}
        compared.add(labels, t.compared)
        agreed.add(labels, t.agreed)
        skipped.add(labels, t.skipped)
        errors.add(labels, t.errors)
        if t.agreement is not None:
            ratio.add(labels, t.agreement)
    return [compared, agreed, skipped, errors, ratio]
