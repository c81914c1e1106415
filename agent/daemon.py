"""``edgefleet agent run``: the daemon that serves the active models and keeps the fleet link.

Start-up order is chosen for offline-first: load every model's active slot (verified) into
the serving table, start the local API, tell systemd READY, and only then start the MQTT link
in the background. A broker or server that is down delays nothing; the link connects when
it can. SIGHUP re-reads the active slots. SIGTERM/SIGINT stop accepting connections, let
in-flight requests finish (up to ``shutdown_timeout_s``), publish offline and exit 0. With
``WatchdogSec`` the event loop pings systemd, so a wedged loop gets the service restarted.

Telemetry (``agent.reporter``): ``Metrics`` counts every call, the reporter keeps a drift
window per served model version and remembers predictions for ``POST /v1/feedback``; with an
identity it closes a batch into STATE_DIR/outbox.sqlite every ``telemetry_interval_s`` and,
with a link, publishes the outbox from the link's thread. ``telemetry = false`` turns all of
it off (the hot path then calls no observer).

The update path plugs in through ``agent.update_service.attach(daemon)``, called once the
serving table and the link exist, before the link starts, and not at all without MQTT. It sets
``daemon.link.on_desired``, swaps sessions and calls ``daemon.publish_reported``; the service
it returns is closed at shutdown. This module does not verify assignments or fetch bundles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import sdnotify
from agent.api import ApiServer, MediaBody
from agent.config import AgentConfig
from agent.errors import AgentError, StateError
from agent.link import Link
from agent.metrics import Metrics
from agent.outbox import Outbox
from agent.reporter import Reporter, accuracy_document
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from agent.update_machine import report_of
from edgefleet import __version__, logs
from edgefleet.profiles import Profile
from edgefleet.telemetry import TELEMETRY_ACK

if TYPE_CHECKING:
    from agent.update_service import UpdateService

log = logging.getLogger("agent.daemon")


class Daemon:
    """Everything one agent process runs. ``run()`` blocks until SIGTERM/SIGINT."""

    def __init__(self, state: StateDir, config: AgentConfig | None = None, *,
                 profile: Profile | None = None) -> None:
        self.state = state.ensure()
        self.config = config or AgentConfig()
        self.profile = profile or state.profile()
        self.store = ModelStore(state)
        self.serving = ServingTable(max_rows=self.config.max_rows)
        self.metrics = Metrics()
        self.reporter: Reporter | None = None
        self.link: Link | None = None
        self.api: ApiServer | None = None
        self.started_at = time.time()
        self.load_failures: dict[str, str] = {}
        self._updates: UpdateService | None = None
        self._reload_lock = threading.Lock()
        self._stop: asyncio.Event | None = None

    # -- models ---------------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Serve each model's active slot; a model whose slot fails to load keeps what it served."""
        with self._reload_lock:  # SIGHUP, POST /v1/reload and commands may overlap
            return self._reload()

    def _reload(self) -> dict[str, Any]:
        loaded: dict[str, str] = {}
        for name in self.store.models():
            try:
                slot = self.store.active(name)
                if slot is None:
                    continue
                current = self.serving.get(name)
                if current is not None and current.slot.sha256 == slot.sha256:
                    loaded[name] = slot.version
                    continue
                self.serving.swap(name, load_session(slot, self.profile))
                loaded[name] = slot.version
                self.load_failures.pop(name, None)
                log.info("serving %s@%s (%s)", name, slot.version, slot.sha256[:12])
            except AgentError as exc:
                self.load_failures[name] = str(exc)
                log.error("cannot serve model %s: %s", name, exc)
        self.publish_reported()
        return {"models": loaded, "failures": dict(self.load_failures)}

    # -- telemetry ------------------------------------------------------------------------------
    def _make_reporter(self) -> Reporter | None:
        if not self.config.telemetry:
            return None
        device_id = self.state.load_identity().device_id if self.state.is_enrolled() else None
        # Without an identity there is no device to report as: drift, metrics and feedback
        # still work locally (status, /v1/feedback), nothing is stored to send.
        outbox = (Outbox(self.state.path / "outbox.sqlite", max_bytes=self.config.outbox_max_bytes,
                         max_rows=self.config.outbox_max_rows) if device_id is not None else None)
        reporter = Reporter(self.metrics, device_id=device_id, outbox=outbox,
                            interval_s=self.config.telemetry_interval_s,
                            drift_every=self.config.telemetry_drift_every)
        reporter.attach(self.serving)
        return reporter

    def _connect_reporter(self, reporter: Reporter, link: Link) -> None:
        def publish(payload: bytes) -> int | None:
            return link.publish_bytes("telemetry", payload)

        def tick() -> None:
            reporter.pump(publish)

        link.on_tick = tick
        link.on_puback = reporter.acked

    # -- reporting ------------------------------------------------------------------------------
    def _update_state(self) -> dict[str, Any]:
        """``reported.update``: the update in flight, or the last outcome and its counter (docs/contracts.md).

        Read from update.json, which agent.updater writes once per step; unreadable or absent: idle.
        """
        try:
            document = json.loads(self.state.update_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            document = None
        return report_of(document)

    def reported(self) -> dict[str, Any]:
        models = {}
        for name in self.serving.names():
            session = self.serving.get(name)
            if session is not None:
                models[name] = {"version": session.manifest.version, "sha256": session.slot.sha256}
        return {"agent_version": __version__, "profile": self.profile.name, "models": models,
                "update": self._update_state(), "assignment_counter": self._assignment_counter()}

    def _assignment_counter(self) -> int:
        """``reported.assignment_counter``: the counter of the last assignment accepted (assignment.json), 0 if none.

        The server compares it with the latest it issued and publishes ``desired`` again to a device
        that is behind (docs/contracts.md): a ``desired`` published while the device's SUBSCRIBE
        waited was lost to it. Unreadable counts as 0: the server then re-sends, which costs one
        message and is refused as a duplicate or a replay, never a wrong update.
        """
        try:
            counter = json.loads(self.state.assignment_file.read_text(encoding="utf-8"))["counter"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return counter if isinstance(counter, int) and not isinstance(counter, bool) and counter > 0 else 0

    def publish_reported(self) -> None:
        if self.link is not None:
            self.link.set_reported(self.reported())

    def status(self) -> dict[str, Any]:
        api = self.api
        models = []
        for name in self.serving.names():
            session = self.serving.get(name)
            if session is None:
                continue
            stats = self.serving.stats(name)
            version = session.manifest.version
            models.append({"name": name, "version": version, "sha256": session.slot.sha256,
                           "runtime": session.runtime, "providers": list(session.providers),
                           "requests": stats.requests, "errors": stats.errors, "input_errors": stats.input_errors,
                           "latency_ms_p50": stats.percentile(50), "latency_ms_p95": stats.percentile(95),
                           "latency_ms_p99": stats.percentile(99),
                           "drift": self.reporter.drift_summary(name, version) if self.reporter else None,
                           "accuracy": accuracy_document(self.metrics.accuracy(name, version))})
        return {
            "pid": os.getpid(), "agent_version": __version__, "state_dir": str(self.state.path),
            "profile": self.profile.name, "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "api": {"tcp": f"{api.tcp_address[0]}:{api.tcp_address[1]}" if api and api.tcp_address else None,
                    "socket": str(api.socket_path) if api and api.socket_path else None},
            "mqtt": {"enabled": self.link is not None, "connected": bool(self.link and self.link.connected),
                     "broker": f"{self.link.address.host}:{self.link.address.port}" if self.link else None,
                     "subscribed": bool(self.link and self.link.subscribed.is_set()),
                     "suback_refusals": self.link.suback_refusals if self.link else 0},
            "models": models, "failures": dict(self.load_failures), "update": self._update_state(),
            "candidates": self.serving.candidates(),
            "telemetry": self.reporter.stats() if self.reporter else None,
        }

    def prometheus(self) -> MediaBody:
        """``GET /metrics``: the serving counters, drift and accuracy in Prometheus text format."""
        from agent import prometheus  # only when scraped

        serving = {}
        for name in self.serving.names():
            session = self.serving.get(name)
            if session is not None:
                serving[name] = session.manifest.version
        reporter = self.reporter
        drift = ({key: reporter.drift_summary(*key) for key in reporter.windows()} if reporter is not None else {})
        outbox = reporter.outbox.stats().rows if reporter is not None and reporter.outbox is not None else None
        confirmation = ((reporter.unconfirmed(), reporter.resent) if reporter is not None and reporter.confirming
                        else None)
        link = self.link
        subscriptions = (link.suback_refusals, link.subscribed.is_set()) if link is not None else None
        families = prometheus.agent_families(serving=serving, totals=self.metrics.totals(),
                                             accuracies=self.metrics.accuracies(), drift=drift, outbox_rows=outbox,
                                             shadow=self.serving.shadow_totals(), confirmation=confirmation,
                                             subscriptions=subscriptions)
        return MediaBody.of(prometheus.render(families), prometheus.CONTENT_TYPE)

    # -- lifecycle ------------------------------------------------------------------------------
    def _make_link(self) -> Link | None:
        if not self.config.mqtt:
            return None
        if not self.state.is_enrolled():
            log.warning("not enrolled: serving local models only, without MQTT")
            return None
        identity = self.state.load_identity()
        brokers = self.config.broker_url or identity.broker_url  # agent.toml's list wins (failover)
        if not brokers:
            log.warning("identity.json names no broker: running without MQTT")
            return None
        link = Link(identity.device_id, brokers, credentials=self.state.load_credentials(),
                    ca_file=self.state.ca_file, keepalive=self.config.keepalive_s,
                    on_command=self._on_command)
        return link

    def _on_command(self, command: dict[str, Any]) -> None:
        name = command.get("command")
        args = command.get("args") or {}
        if name == "report":
            self.reload()
            if self.link is not None:
                self.link.report_now()
        elif name == "log_level" and isinstance(args, dict):
            level = str(args.get("level", "INFO")).upper()
            if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
                logging.getLogger().setLevel(level)
        elif name == "reverify":
            self.reload()
        elif name == TELEMETRY_ACK:
            seqs = args.get("seqs") if isinstance(args, dict) else None
            if not isinstance(seqs, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seqs):
                log.warning("ignoring a telemetry_ack without a list of integer seqs")
            elif self.reporter is not None:
                self.reporter.confirmed(seqs)
        else:
            log.warning("ignoring unknown command %r", name)

    def _attach_updates(self) -> None:
        if self.link is None:
            return  # updates arrive over MQTT: without a link there is nothing to attach
        # Imported here, not at the top: the update path loads tuf and cryptography, 15 MB of RSS
        # (43 -> 58 MB measured) that an agent without MQTT never needs.
        from agent.update_service import attach

        self._updates = attach(self)

    async def run_async(self, *, ready: Callable[[Daemon], None] | None = None) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # SIGHUP (systemctl reload): serve the active slots again, off the loop.
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload))
        if self.state.is_enrolled():
            logs.set_context(device_id=self.state.load_identity().device_id)  # on every line (JSON or text)
        self.reporter = self._make_reporter()
        self.link = self._make_link()
        if self.link is not None and self.reporter is not None:
            self._connect_reporter(self.reporter, self.link)
        self.reload()
        self.api = ApiServer(self.serving, max_body_bytes=self.config.max_body_bytes,
                             status=self.status, reload=self.reload,
                             feedback=self.reporter.feedback if self.reporter is not None else None,
                             metrics=self.prometheus)
        # TCP only when asked for (every local user reaches a loopback port); the socket where its
        # directory's group reaches it, with STATE_DIR/agent.sock linked to it for the CLI.
        await self.api.start(host=self.config.tcp_host, port=self.config.http_port,
                             socket_path=self.config.socket_file(self.state.path) if self.config.unix_socket else None,
                             socket_alias=self.state.socket_path)
        self._attach_updates()
        if self.link is not None:
            self.link.set_reported(self.reported())
            self.link.start()
        if self.reporter is not None:
            self.reporter.start()
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(self.serving.names())} model(s)")
        log.info("agent ready: %s", json.dumps(self.status()["api"]))
        if ready is not None:
            ready(self)
        watchdog = sdnotify.watchdog_interval()
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), watchdog or 3600)
                if watchdog:
                    sdnotify.notify("WATCHDOG=1")
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Ask a running daemon to stop; call it on the daemon's event loop (signals do)."""
        if self._stop is not None:
            self._stop.set()

    async def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("stopping: finishing in-flight requests")
        if self.api is not None:
            await self.api.shutdown(self.config.shutdown_timeout_s)
        if self._updates is not None:
            self._updates.close()
        loop = asyncio.get_running_loop()
        if self.reporter is not None:
            await loop.run_in_executor(None, self.reporter.stop)
        if self.link is not None:
            await loop.run_in_executor(None, self.link.stop)
        if self.reporter is not None and self.reporter.outbox is not None:
            self.reporter.outbox.close()  # after the link: its thread acks until it stops
        self.serving.close()

    def run(self) -> int:
        asyncio.run(self.run_async())
        return 0


def open_daemon(state_dir: str, config_path: str | None, *, profile: Profile | None = None,
                **overrides: Any) -> Daemon:
    """Build a daemon from a state directory, an optional agent.toml and flag overrides."""
    config = AgentConfig.from_toml(config_path) if config_path else AgentConfig()
    config = config.with_overrides(**overrides)
    state = StateDir(state_dir)
    if profile is None and not state.profile_file.exists():
        raise StateError(f"{state.profile_file} does not exist: the daemon needs a firmware profile",
                         fix="enroll the device (edgefleet agent enroll) or install a bundle with --profile NAME")
    return Daemon(state, config, profile=profile)
