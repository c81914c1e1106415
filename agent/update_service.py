"""The update path as a daemon service: builds the Updater from the daemon's parts and runs it.

``attach(daemon)`` is called by agent/daemon.py once the serving table and the MQTT link exist.
For an enrolled device with a link and a TUF root it builds an ``Updater``: `desired` payloads
go to ``handle_assignment``, events go out on `events`, the daemon's ``publish_reported`` runs
after every persisted step, and an ``UpdateService`` thread runs ``resume()`` once, then
``tick()`` every ``update_tick_s``. Without a link, an identity or a TUF root it returns None.

Settings come from agent.toml (``AgentConfig``); the environment may override a few, for
short-lived fleets (tests, walkthroughs) that agent.toml has no keys for yet:

    EDGEFLEET_PROBATION_S, EDGEFLEET_PROBATION_MIN_REQUESTS   probation duration and traffic
    EDGEFLEET_PROBATION_MAX_RESTARTS                          restarts in probation that roll back
    EDGEFLEET_UPDATE_TICK_S                                   the tick interval
    EDGEFLEET_CANDIDATE_RAM_SHARE                             a candidate's memory budget (share of ram_mb)

Fault injection for the end-to-end crash tests (tests/integration/update_path), off unless set:
the updater pauses (for EDGEFLEET_FAULT_PAUSE_S, default 60) right after update.json says the
state named by EDGEFLEET_FAULT_PAUSE_AT (once per process), or once the download named has
EDGEFLEET_FAULT_PAUSE_AT_BYTE bytes on disk, so a test can SIGKILL the process at exactly that
point.

Not here: verifying, downloading and judging updates (agent/updater.py), MQTT (agent/link.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from agent.config import AgentConfig
from agent.fetcher import ResumingFetcher
from agent.link import Link
from agent.probation import ProbationConfig
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from agent.tuf_client import ngclient_factory
from agent.update_machine import UpdateMachine
from agent.updater import Updater, UpdaterError
from edgefleet import logs
from edgefleet.profiles import Profile

log = logging.getLogger("agent.update_service")

PROBATION_S = "EDGEFLEET_PROBATION_S"
PROBATION_MIN_REQUESTS = "EDGEFLEET_PROBATION_MIN_REQUESTS"
PROBATION_MAX_RESTARTS = "EDGEFLEET_PROBATION_MAX_RESTARTS"
UPDATE_TICK_S = "EDGEFLEET_UPDATE_TICK_S"
CANDIDATE_RAM_SHARE = "EDGEFLEET_CANDIDATE_RAM_SHARE"
FAULT_PAUSE_AT = "EDGEFLEET_FAULT_PAUSE_AT"
FAULT_PAUSE_AT_BYTE = "EDGEFLEET_FAULT_PAUSE_AT_BYTE"
FAULT_PAUSE_S = "EDGEFLEET_FAULT_PAUSE_S"


class DaemonParts(Protocol):
    """What ``attach`` uses of agent.daemon.Daemon."""

    @property
    def state(self) -> StateDir: ...
    @property
    def config(self) -> AgentConfig: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def store(self) -> ModelStore: ...
    @property
    def serving(self) -> ServingTable: ...
    @property
    def link(self) -> Link | None: ...
    def publish_reported(self) -> None: ...


class UpdateService:
    """Runs ``resume()`` once and ``tick()`` every ``interval`` seconds on its own thread."""

    def __init__(self, updater: Updater, interval: float) -> None:
        self.updater = updater
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.updater.resume()
        except Exception:
            log.exception("resuming the update failed")
        while not self._stop.wait(self.interval):
            try:
                self.updater.tick()
            except Exception:
                log.exception("update tick failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def attach(daemon: DaemonParts) -> UpdateService | None:
    """Verified updates over MQTT for an enrolled device; None without a link, identity or TUF root."""
    state = daemon.state
    link = daemon.link
    if link is None or not state.is_enrolled() or not state.tuf_root_file.exists():
        return None
    pause_after = _pause_after_state()

    story = UpdateStory()

    def persisted(machine: UpdateMachine) -> None:
        story.persisted(machine)
        daemon.publish_reported()
        pause_after(machine)

    updater = Updater(state, daemon.store, daemon.serving, lambda doc: link.publish("events", doc),
                      tuf=ngclient_factory(state, _fetcher(state)), profile=daemon.profile,
                      on_persist=persisted, probation=probation_config(daemon.config),
                      candidate_ram_share=float(os.environ.get(CANDIDATE_RAM_SHARE, daemon.config.candidate_ram_share)),
                      shadow_queue_size=daemon.config.shadow_queue_size,
                      shadow_cpu_share=daemon.config.shadow_cpu_share)

    def desired(envelope: bytes) -> None:
        updater.handle_assignment(envelope)  # a refusal is reported as a `failed` event by the updater
        # The accepted counter is in `reported` (assignment_counter): publish it even when the
        # assignment changed nothing to serve, so the server does not think we are still behind.
        daemon.publish_reported()

    link.on_desired = desired
    service = UpdateService(updater, float(os.environ.get(UPDATE_TICK_S, daemon.config.update_tick_s)))
    service.start()
    return service


class UpdateStory:
    """One INFO line per state an update enters (issue 17): ``update of wine 1.1.0: downloading``.

    The updater persists many times within one state (probation totals, retries); only a new
    state, or a new target in the same state, makes a line. The fields (model, version,
    rollout id) go with the record, so the JSON log carries them as keys.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self._last: tuple[str, str | None] | None = None

    def persisted(self, machine: UpdateMachine) -> None:
        target = machine.target
        key = (machine.state.value, target.attempt if target is not None else None)
        if key == self._last:
            return
        self._last = key
        if target is None:
            return  # idle with nothing in hand: nothing to tell
        line = f"update of {target.model} {target.version}: {machine.state.value}"
        if machine.reason:
            line += f" ({machine.reason})"
        level = logging.WARNING if machine.state.value in ("failed", "rolled_back") else logging.INFO
        self.log.log(level, line, extra=logs.fields(model=target.model, version=target.version,
                                                    rollout_id=target.rollout_id))


def probation_config(config: AgentConfig) -> ProbationConfig:
    """Probation settings from agent.toml; the environment (tests, the demo) may override them."""
    defaults = ProbationConfig(duration_s=config.probation_s, min_requests=config.probation_min_requests,
                               max_error_rate=config.probation_max_error_rate,
                               max_restarts=config.probation_max_restarts)
    duration = os.environ.get(PROBATION_S)
    requests = os.environ.get(PROBATION_MIN_REQUESTS)
    restarts = os.environ.get(PROBATION_MAX_RESTARTS)
    try:
        return replace(defaults, duration_s=float(duration) if duration is not None else defaults.duration_s,
                       min_requests=int(requests) if requests is not None else defaults.min_requests,
                       max_restarts=int(restarts) if restarts is not None else defaults.max_restarts)
    except ValueError as exc:
        raise UpdaterError(f"{PROBATION_S}={duration!r}, {PROBATION_MIN_REQUESTS}={requests!r} and "
                           f"{PROBATION_MAX_RESTARTS}={restarts!r} must be numbers",
                           fix="e.g. EDGEFLEET_PROBATION_S=5 EDGEFLEET_PROBATION_MIN_REQUESTS=10") from exc


# -- fault injection (tests only; every hook is a no-op unless its variable is set) -------------
def _fault_pause(where: str) -> None:
    seconds = float(os.environ.get(FAULT_PAUSE_S, "60"))
    log.warning("fault injection: pausing %g s %s", seconds, where)
    time.sleep(seconds)


def _pause_after_state() -> Callable[[UpdateMachine], None]:
    """A hook that pauses once, right after update.json first says EDGEFLEET_FAULT_PAUSE_AT."""
    wanted: list[str] = [os.environ[FAULT_PAUSE_AT]] if FAULT_PAUSE_AT in os.environ else []

    def hook(machine: UpdateMachine) -> None:
        if wanted and machine.state.value == wanted[0]:
            wanted.clear()
            _fault_pause(f"after persisting {machine.state.value}")

    return hook


def _fetcher(state: StateDir) -> ResumingFetcher | None:
    """The default fetcher (None), or one that stops once EDGEFLEET_FAULT_PAUSE_AT_BYTE bytes are on disk."""
    raw = os.environ.get(FAULT_PAUSE_AT_BYTE)
    if raw is None:
        return None
    at_byte = int(raw)
    paused = threading.Event()

    def progress(url: str, received: int, total: int | None) -> None:
        if received >= at_byte and not paused.is_set():
            paused.set()
            _fault_pause(f"with {received} bytes of {url} on disk")

    # Small chunks so the pause lands close to the requested byte.
    return ResumingFetcher(state.downloads_dir, chunk_size=1024, progress=progress)


__all__ = ["DaemonParts", "UpdateService", "attach", "probation_config"]
