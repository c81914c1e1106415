"""Where alert events go: the log, a webhook, and a retraining command.

    sinks = sinks_from_config(config)          # from fleet_server.telemetry.alerts.AlertConfig
    failures = dispatch(events, sinks)         # every sink gets every event; failures are returned

* ``LogSink`` writes one line per event to the ``fleet_server.telemetry.alerts`` logger (WARNING when
  firing, INFO when resolved).
* ``WebhookSink`` POSTs the event's JSON (``AlertEvent.to_dict``) with httpx and a timeout; a
  non-2xx answer or a network error is an ``AlertDeliveryError``.
* ``CommandSink`` runs the configured retraining command with the event's JSON on stdin, for
  ``firing`` events of rules marked ``retrain = true``. No shell: the command is an argv list,
  so nothing in the alert (subjects come from device labels) can be interpreted by a shell.

``dispatch`` never lets one broken sink stop the others: it logs and returns the failures.
It does not retry: the evaluator loop calls it again only for new events, so a webhook that
was down misses that event (the log still has it). Retries with a persistent queue would be
the next step.

    ServerError (fleet_server.errors)
    └── AlertDeliveryError     a sink could not deliver an event
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet_server.errors import ServerError
from fleet_server.telemetry.alerts import AlertConfig, AlertEvent

log = logging.getLogger("fleet_server.telemetry.alerts")


class AlertDeliveryError(ServerError):
    """A sink could not deliver an alert event."""


class AlertSink(Protocol):
    name: str

    def send(self, event: AlertEvent) -> None: ...


def event_json(event: AlertEvent) -> bytes:
    return json.dumps(event.to_dict(), sort_keys=True, allow_nan=False).encode()


class LogSink:
    name = "log"

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def send(self, event: AlertEvent) -> None:
        level = logging.WARNING if event.state == "firing" else logging.INFO
        self.logger.log(level, "alert %s [%s]: %s", event.rule.name, event.state, event.message)


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def send(self, event: AlertEvent) -> None:
        import httpx

        try:
            response = httpx.post(self.url, content=event_json(event), timeout=self.timeout_s,
                                  headers={"Content-Type": "application/json", "User-Agent": "edgefleet-alerts"})
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"alert webhook {self.url} could not be reached: {exc}",
                                     fix="check the [alerts] webhook URL and that the receiver is up") from exc
        if not 200 <= response.status_code < 300:
            raise AlertDeliveryError(f"alert webhook {self.url} answered {response.status_code}",
                                     fix="check the receiver's logs; it must answer 2xx to a JSON POST")


class CommandSink:
    name = "retrain"

    def __init__(self, argv: Sequence[str], *, timeout_s: float = 600.0) -> None:
        if not argv:
            raise AlertDeliveryError("the retraining command is empty", fix="set [alerts] retrain_command")
        self.argv = list(argv)
        self.timeout_s = timeout_s

    def send(self, event: AlertEvent) -> None:
        if event.state != "firing" or not event.rule.retrain:
            return
        try:
            done = subprocess.run(self.argv, input=event_json(event), capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError as exc:
            raise AlertDeliveryError(f"retraining command {self.argv[0]!r} does not exist",
                                     fix="set [alerts] retrain_command to an executable path") from exc
        except subprocess.TimeoutExpired as exc:
            raise AlertDeliveryError(f"retraining command {self.argv[0]!r} ran past {self.timeout_s:.0f} s and was killed",
                                     fix="start long jobs in the background from the command, or raise retrain_timeout_s") from exc
        except OSError as exc:
            raise AlertDeliveryError(f"retraining command {self.argv[0]!r} could not run: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise AlertDeliveryError(f"retraining command {self.argv[0]!r} exited {done.returncode}: {tail[0]}")


@dataclass(frozen=True)
class DeliveryFailure:
    sink: str
    event: AlertEvent
    error: AlertDeliveryError


def sinks_from_config(config: AlertConfig) -> list[AlertSink]:
    sinks: list[AlertSink] = [LogSink()]
    if config.webhook:
        sinks.append(WebhookSink(config.webhook, timeout_s=config.webhook_timeout_s))
    if config.retrain_command:
        sinks.append(CommandSink(config.retrain_command, timeout_s=config.retrain_timeout_s))
    return sinks


def dispatch(events: Iterable[AlertEvent], sinks: Sequence[AlertSink]) -> list[DeliveryFailure]:
    """Give every event to every sink; log and return what failed."""
    failures = []
    for event in events:
        for sink in sinks:
            try:
                sink.send(event)
            except AlertDeliveryError as exc:
                log.error("alert %s [%s] not delivered to %s: %s", event.rule.name, event.state, sink.name, exc)
                failures.append(DeliveryFailure(sink.name, event, exc))
    return failures
