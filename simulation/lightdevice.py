"""Light simulated devices: many in one process, speaking real MQTT and checking real signatures.

A ``LightDevice`` stands in for an ``edgefleet agent`` where a test or ``edgefleet simulate``
needs hundreds or thousands of devices. It connects to the real broker with its own
credentials (and a retained last will that marks it offline), subscribes to its own
``desired`` and ``commands`` topics, verifies each assignment with
``edgefleet.assignment.verify_assignment`` against the director key, optionally checks the
named target against the TUF targets metadata, and then publishes the same lifecycle events
and ``reported`` documents a real agent does (docs/contracts.md, "MQTT payloads").

What happens to an update is scripted by a ``Behaviour``: succeed, fail the health check,
fail in probation (roll back), or go offline. ``plan_update`` turns one model's update and
its scripted ``Outcome`` into the list of ``Step`` events; it is pure so it is tested alone.

All devices of a ``LightFleet`` share ONE network thread: each device has its own paho client
(own connection, own credentials, own will) but no paho thread; the fleet's loop drives every
client's socket through one ``selectors`` selector (paho's external-loop callbacks), and runs
the scripted steps from a timer heap on that same thread, so no locking is needed inside a
device. This module deliberately does not download bundles, load models or serve predictions.

    EdgefleetError
    └── SimulationError     the fleet could not connect, or a wait ran out of time
"""

from __future__ import annotations

import contextlib
import enum
import functools
import heapq
import itertools
import json
import logging
import queue
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from edgefleet import events, topics
from edgefleet.assignment import Assignment, ModelTarget, verify_assignment
from edgefleet.backoff import suback_backoff
from edgefleet.errors import AssignmentError, EdgefleetError

log = logging.getLogger(__name__)

AGENT_VERSION = "lightdevice-0.1.0"
# Seconds between keepalive checks of every client; paho needs loop_misc at least this often.
_MISC_INTERVAL = 1.0


class SimulationError(EdgefleetError):
    """A simulated fleet could not connect, or a wait for it ran out of time."""


class Outcome(enum.StrEnum):
    """How a simulated device's update of one model ends."""

    SUCCEED = "succeed"
    FAIL_HEALTH = "fail_health"
    FAIL_PROBATION = "fail_probation"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Behaviour:
    """The script a device follows: an outcome per ``NAME@VERSION`` and a default.

    ``step_delay`` is the simulated time (seconds) each lifecycle step takes.
    """

    default: Outcome = Outcome.SUCCEED
    per_version: Mapping[str, Outcome] = field(default_factory=dict)
    step_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.step_delay < 0:
            raise ValueError("step_delay must be >= 0 seconds")
        for ref in self.per_version:
            if "@" not in ref:
                raise ValueError(f"per_version key {ref!r} must be NAME@VERSION, e.g. digits@2.0.0")

    def outcome_for(self, model: str, version: str) -> Outcome:
        return self.per_version.get(f"{model}@{version}", self.default)


@dataclass(frozen=True)
class Step:
    """One lifecycle event of an update and the version that serves once it is published."""

    event: str
    model: str
    version: str
    serving: str | None
    reason: str | None = None
    goes_offline: bool = False


_HAPPY_PATH = (events.ASSIGNED, events.DOWNLOADED, events.VERIFIED, events.STAGED, events.HEALTH_PASSED,
               events.ACTIVATED, events.COMMITTED)


def plan_update(model: str, current: str | None, target: str, outcome: Outcome, *,
                refusal: str | None = None) -> list[Step]:
    """The events one model's update produces, in order (pure).

    ``refusal`` is a reason the device refuses the target before downloading it (for
    example the TUF targets metadata disagrees with the assignment): then the update is
    ``assigned`` then ``failed`` and the current version keeps serving.
    """
    if refusal is not None:
        return [Step(events.ASSIGNED, model, target, current), Step(events.FAILED, model, target, current, refusal)]
    if outcome is Outcome.OFFLINE:
        return [Step(events.ASSIGNED, model, target, current, goes_offline=True)]
    if outcome is Outcome.FAIL_HEALTH:
        steps = [Step(e, model, target, current) for e in _HAPPY_PATH[:4]]
        return [*steps, Step(events.FAILED, model, target, current, events.HEALTH_FAILED)]
    if outcome is Outcome.FAIL_PROBATION:
        steps = [Step(e, model, target, current) for e in _HAPPY_PATH[:5]]
        steps.append(Step(events.ACTIVATED, model, target, target))
        return [*steps, Step(events.ROLLED_BACK, model, target, current, events.PROBATION_FAILED)]
    steps = [Step(e, model, target, current) for e in _HAPPY_PATH[:5]]
    return [*steps, Step(events.ACTIVATED, model, target, target), Step(events.COMMITTED, model, target, target)]


class TargetChecker(Protocol):
    """Checks an assignment's target against the TUF targets metadata."""

    def check(self, target: ModelTarget) -> str | None:
        """Return a refusal reason, or None if TUF agrees with the assignment."""


class TufTargetChecker:
    """Asks the real TUF repository (``tuf.ngclient``) for a target's hash and length.

    One checker serves a whole fleet: every device trusts the same root, and the point of the
    light device is to not keep a TUF client per device. An ngclient ``Updater`` refreshes
    once in its life, so each check builds a new one over the shared metadata directory;
    answers are reused for ``cache_seconds`` so a wave of devices does not refresh a wave of
    times.
    """

    def __init__(self, root_json: bytes, metadata_url: str, metadata_dir: Path, *,
                 cache_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        from edgefleet.atomic import atomic_write_bytes

        if not (metadata_dir / "root.json").exists():
            atomic_write_bytes(metadata_dir / "root.json", root_json)
        self._metadata_dir = metadata_dir
        self._metadata_url = metadata_url
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._answers: dict[ModelTarget, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def check(self, target: ModelTarget) -> str | None:
        with self._lock:
            cached = self._answers.get(target)
            if cached is not None and self._clock() - cached[0] < self._cache_seconds:
                return cached[1]
            answer = self._ask(target)
            self._answers[target] = (self._clock(), answer)
            return answer

    def _ask(self, target: ModelTarget) -> str | None:
        from tuf.api.exceptions import DownloadError
        from tuf.api.exceptions import RepositoryError as TufRepositoryError
        from tuf.ngclient.updater import Updater

        try:
            updater = Updater(metadata_dir=str(self._metadata_dir), metadata_base_url=self._metadata_url,
                              bootstrap=None)
            updater.refresh()
            info = updater.get_targetinfo(target.target_path)
        except (TufRepositoryError, DownloadError, OSError) as exc:
            log.warning("TUF refresh failed: %s", exc)
            return "tuf_unavailable"
        if info is None:
            return "tuf_unknown_target"
        if info.hashes.get("sha256") != target.sha256 or info.length != target.length:
            return "tuf_hash_mismatch"
        return None


@dataclass(frozen=True)
class DeviceIdentity:
    """What enrollment gave a device: its id, profile, MQTT credentials and the director key."""

    device_id: str
    profile: str
    director_public_b64: str
    username: str | None = None
    password: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        topics.check_device_id(self.device_id)
        if (self.username is None) != (self.password is None):
            raise ValueError("give both an MQTT username and password, or neither")


@dataclass(frozen=True)
class SentEvent:
    """An event a device published, kept for tests and reports."""

    at: float
    payload: Mapping[str, Any]


class _Loop:
    """One thread that drives many paho clients' sockets and a heap of timers.

    Every paho call is made on this thread (paho is not thread-safe per client); other
    threads hand work over with ``call_soon``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._selector = selectors.DefaultSelector()
        self._clock = clock
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.clients: list[Any] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightfleet-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=10)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Schedule ``fn``; only from the loop thread (the heap is not locked)."""
        heapq.heappush(self._timers, (self._clock() + delay, next(self._seq), fn))

    def attach(self, client: Any) -> None:
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        self.clients.append(client)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the buffer is full (already woken) or we are closing
            self._wake_w.send(b"x")

    def _opened(self, client: Any, _userdata: Any, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _closed(self, _client: Any, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _want_write(self, client: Any, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client: Any, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(sock, selectors.EVENT_READ, client)

    def _run(self) -> None:
        next_misc = self._clock()
        while not self._stopping.is_set():
            now = self._clock()
            timeout = min(next_misc - now, self._timers[0][0] - now if self._timers else _MISC_INTERVAL)
            for key, mask in self._selector.select(max(0.0, timeout)):
                client = key.data
                if client is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                self._guarded(functools.partial(self._service, client, mask))
            while True:
                try:
                    fn = self._calls.get_nowait()
                except queue.Empty:
                    break
                self._guarded(fn)
            now = self._clock()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn)
            if now >= next_misc:
                next_misc = now + _MISC_INTERVAL
                for client in self.clients:
                    self._guarded(client.loop_misc)

    @staticmethod
    def _service(client: Any, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            client.loop_read()
        if mask & selectors.EVENT_WRITE and client.socket() is not None:
            client.loop_write()

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one device's bug must not stop the fleet's network thread
            log.exception("light device callback failed")


class LightDevice:
    """One simulated device. Created by ``LightFleet.add``; all its methods run on the loop thread."""

    def __init__(self, identity: DeviceIdentity, behaviour: Behaviour, loop: _Loop, broker: tuple[str, int], *,
                 models: Mapping[str, tuple[str, str]] | None = None, checker: TargetChecker | None = None,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.identity = identity
        self.behaviour = behaviour
        # name -> (version, sha256) of what serves now
        self.models: dict[str, tuple[str, str]] = dict(models or {})
        self.last_counter = 0
        self.events: list[SentEvent] = []
        self.refusals: list[str] = []
        self.connected = threading.Event()
        # Set once the broker granted both subscriptions (SUBACK): on the NATS cluster a SUBSCRIBE
        # waits for its JetStream consumers, long after CONNACK in a connect burst, and what is
        # published to the device meanwhile misses it (docs/deployment.md "The consumer limit").
        self.subscribed = threading.Event()
        self.suback_refusals = 0
        self._suback_backoff = suback_backoff()  # edgefleet.backoff: the agent's link uses the same schedule
        self.want_online = True
        self._loop = loop
        self._broker = broker
        self._checker = checker
        self._wall_clock = wall_clock
        self._generation = 0  # bumped to abandon scheduled steps (new assignment, lost network)
        self._accepted: Assignment | None = None
        self._in_flight = False
        self._interrupted = False
        # The steps of the update in flight not sent yet, and what served before it: a drop keeps
        # them, so the device back online finishes a model it had already switched to.
        self._left: tuple[Step, ...] = ()
        self._left_before: dict[str, tuple[str, str]] = {}
        self._update: dict[str, Any] = {"state": "idle", "model": None, "version": None, "counter": None, "reason": None}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity.device_id,
                                   protocol=mqtt.MQTTv311, clean_session=True)
        if identity.username is not None:
            self._client.username_pw_set(identity.username, identity.password)
        will = json.dumps({"device_id": identity.device_id, "online": False}).encode()
        self._client.will_set(topics.reported(identity.device_id), will, qos=1, retain=True)
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        loop.attach(self._client)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def event_names(self, model: str | None = None, version: str | None = None) -> list[str]:
        return [str(e.payload["event"]) for e in list(self.events)
                if (model is None or e.payload.get("model") == model)
                and (version is None or e.payload.get("version") == version)]

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        self.want_online = True
        host, port = self._broker
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            log.warning("%s: connect failed (%s); retrying", self.device_id, exc)
            self._loop.call_later(1.0, self._reconnect)

    def _reconnect(self) -> None:
        if not self.want_online or self.connected.is_set():
            return
        try:
            self._client.reconnect()
        except OSError:
            self._loop.call_later(1.0, self._reconnect)

    def drop(self) -> None:
        """Lose the network without saying goodbye: the broker publishes the last will.

        An update in flight stops; like an agent restarting from its persisted state, the
        device takes it up again when it is back online (``connect``).
        """
        self.want_online = False
        self._generation += 1
        self._interrupted = self._in_flight
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def disconnect(self) -> None:
        self.want_online = False
        self._client.disconnect()

    def _on_connect(self, client: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, reason_code)
            return
        self.connected.set()
        self._subscribe()
        self._publish_reported()
        if self._interrupted and self._accepted is not None:
            self._interrupted = False
            self._start(self._accepted, resumed=True)

    def _on_subscribe(self, _client: Any, _u: Any, _mid: int, reason_codes: Any, _props: Any) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:  # a broker refusing (0x80) leaves the device connected and deaf: ask again
            self.suback_refusals += 1
            log.warning("%s: broker refused the subscriptions: %s", self.device_id, refused)
            # NATS refuses a SUBSCRIBE whose consumer takes over 5 s in a connect burst: back off,
            # jittered, so the retries do not arrive as one more burst.
            self._loop.call_later(self._suback_backoff.next(), self._subscribe)
            return
        if self._suback_backoff.attempt:
            # Granted after a refusal: a `desired` published meanwhile was lost to us. Report the
            # counter we hold, so the server sends it again (docs/contracts.md). Unlike the agent,
            # not after every fresh session: the bench's thousands of devices would report twice
            # at each connect, and the connect-time report already follows the SUBSCRIBE.
            self._suback_backoff.reset()
            self._publish_reported()
        self.subscribed.set()

    def _subscribe(self) -> None:
        if self.connected.is_set():
            self._client.subscribe([(topics.desired(self.device_id), 1), (topics.commands(self.device_id), 1)])

    def _on_disconnect(self, _client: Any, _u: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self.want_online:
            self._loop.call_later(1.0, self._reconnect)

    # -- messages -----------------------------------------------------------------------

    def _on_message(self, _client: Any, _u: Any, message: Any) -> None:
        if message.topic == topics.commands(self.device_id):
            self._publish_reported()
            return
        if message.topic != topics.desired(self.device_id) or not message.payload:
            return
        self._on_assignment(bytes(message.payload))

    def _on_assignment(self, envelope: bytes) -> None:
        try:
            document = json.loads(envelope)
            if int(document["signed"]["counter"]) == self.last_counter:
                return  # the retained copy of what we already accepted, redelivered on reconnect
        except (ValueError, KeyError, TypeError):
            pass  # verify_assignment names the problem
        try:
            assignment = verify_assignment(envelope, director_public_b64=self.identity.director_public_b64,
                                           device_id=self.device_id, last_counter=self.last_counter,
                                           now=self._wall_clock())
        except AssignmentError as exc:
            self.refusals.append(exc.reason)
            self._send_event(events.FAILED, None, None, None, None, exc.reason)
            return
        self.last_counter = assignment.counter
        self._accepted = assignment
        self._start(assignment, resumed=False)

    def _start(self, assignment: Assignment, *, resumed: bool) -> None:
        """Run the steps of ``assignment``'s updates; ``resumed``: after a drop interrupted them.

        A resumed update of a model not switched yet starts again (as an agent restarting from
        its persisted state downloads again). One already switched (activated, outcome not sent)
        goes on with the steps it had left, against what served before it: nothing is left to
        install, but its outcome still has to be sent, or the server waits for it forever.
        """
        self._generation += 1
        steps: list[Step] = []
        before = dict(self.models)
        for name, target in sorted(assignment.models.items()):
            current = self.models.get(name, (None, ""))[0]
            if current == target.version:
                if resumed:
                    left = [step for step in self._left if step.model == name]
                    steps += left
                    if left:
                        before.pop(name, None)
                        if name in self._left_before:
                            before[name] = self._left_before[name]
                continue
            refusal = self._checker.check(target) if self._checker is not None else None
            outcome = self.behaviour.outcome_for(name, target.version)
            if resumed and outcome is Outcome.OFFLINE:
                outcome = Outcome.SUCCEED  # it went offline once; back now, it finishes the update
            steps += plan_update(name, current, target.version, outcome, refusal=refusal)
        self._in_flight = bool(steps)
        self._left, self._left_before = tuple(steps), before
        self._run_steps(steps, assignment, self._generation, time.monotonic(), before)

    def _run_steps(self, steps: Sequence[Step], assignment: Assignment, generation: int, started: float,
                   before: Mapping[str, tuple[str, str]]) -> None:
        if generation != self._generation or not steps:
            return
        step, rest = steps[0], steps[1:]
        target = assignment.models[step.model]
        if step.serving == target.version:
            self.models[step.model] = (target.version, target.sha256)
        elif step.model in before:
            self.models[step.model] = before[step.model]
        else:
            self.models.pop(step.model, None)
        terminal = step.event in events.OUTCOME_EVENTS
        self._update = {"state": step.event, "model": step.model, "version": step.version,
                        "counter": assignment.counter, "reason": step.reason}
        self._send_event(step.event, step.model, step.version, assignment.counter, assignment.rollout_id,
                         step.reason, {"total_ms": round((time.monotonic() - started) * 1000, 3)})
        if step.event == events.ASSIGNED or terminal:
            self._publish_reported()
        self._in_flight = bool(rest) or step.goes_offline
        self._left = tuple(rest)
        if step.goes_offline:
            self.drop()
            return
        if rest:
            self._loop.call_later(self.behaviour.step_delay,
                                  lambda: self._run_steps(rest, assignment, generation, started, before))

    def _send_event(self, event: str, model: str | None, version: str | None, counter: int | None,
                    rollout_id: str | None, reason: str | None, timings: Mapping[str, float] | None = None) -> None:
        payload = events.UpdateEvent(self.device_id, uuid.uuid4().hex, self._wall_clock().timestamp(), event, model,
                                     version, counter, rollout_id, reason, dict(timings or {}),
                                     {"simulated": True}).to_dict()
        self.events.append(SentEvent(time.monotonic(), payload))
        self._client.publish(topics.events(self.device_id), json.dumps(payload).encode(), qos=1)

    def _publish_reported(self) -> None:
        payload = {"device_id": self.device_id, "online": True, "agent_version": AGENT_VERSION,
                   "profile": self.identity.profile,
                   "models": {n: {"version": v, "sha256": s} for n, (v, s) in sorted(self.models.items())},
                   "update": dict(self._update), "assignment_counter": self.last_counter,
                   "ts": self._wall_clock().timestamp()}
        self._client.publish(topics.reported(self.device_id), json.dumps(payload).encode(), qos=1, retain=True)


class LightFleet:
    """Many light devices sharing one network thread.

    Use as a context manager: ``add`` devices, then ``start`` (or add after start; the device
    connects at once), ``wait_connected``, and ``stop`` at the end.
    """

    def __init__(self, broker_url: str, *, checker: TargetChecker | None = None,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        parsed = urlparse(broker_url)
        if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
            raise SimulationError(f"broker URL {broker_url!r} is not usable", fix="write it as mqtt://HOST:PORT")
        self._broker = (parsed.hostname, parsed.port or 1883)
        self._checker = checker
        self._wall_clock = wall_clock
        self._loop = _Loop()
        self._started = False
        self.devices: dict[str, LightDevice] = {}

    def add(self, identity: DeviceIdentity, behaviour: Behaviour | None = None, *,
            models: Mapping[str, tuple[str, str]] | None = None) -> LightDevice:
        device = self._on_loop(lambda: LightDevice(identity, behaviour or Behaviour(), self._loop, self._broker,
                                                   models=models, checker=self._checker,
                                                   wall_clock=self._wall_clock))
        self.devices[identity.device_id] = device
        if self._started:
            self._on_loop(device.connect)
        return device

    def start(self) -> LightFleet:
        self._loop.start()
        self._started = True
        for device in list(self.devices.values()):
            self._on_loop(device.connect)
        return self

    def wait_connected(self, timeout: float = 20.0, *, subscribed: bool = False) -> None:
        """Every online device has its CONNACK (``subscribed``: and the SUBACK granting both topics)."""
        deadline = time.monotonic() + timeout
        for device in self.devices.values():
            flag = device.subscribed if subscribed else device.connected
            if device.want_online and not flag.wait(max(0.0, deadline - time.monotonic())):
                missing = sum(1 for d in self.devices.values()
                              if d.want_online and not (d.subscribed if subscribed else d.connected).is_set())
                refused = sum(d.suback_refusals for d in self.devices.values())
                what = f"subscribed ({refused} SUBACKs refused)" if subscribed else "connect"
                raise SimulationError(f"{missing} of {len(self.devices)} light devices did not {what} in {timeout:g}s",
                                      fix="check the broker URL, the devices' MQTT credentials and ACL, and on "
                                          "NATS the consumer limit (docs/deployment.md)")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; raise SimulationError naming ``what`` on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SimulationError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def drop(self, device_id: str) -> None:
        self._on_loop(self.devices[device_id].drop)

    def reconnect(self, device_id: str) -> None:
        self._on_loop(self.devices[device_id].connect)

    def stop(self) -> None:
        if self._started:
            for device in list(self.devices.values()):
                self._on_loop(device.disconnect)
            # give the DISCONNECT packets a moment to leave so the broker does not fire the wills
            time.sleep(0.1)
            self._loop.stop()
            self._started = False

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop thread (or inline before the loop runs) and return its value."""
        if not self._started or self._loop.on_loop_thread():
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        self._loop.call_soon(call)
        if not done.wait(30):
            raise SimulationError("the light fleet's network thread did not answer in 30 s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def __enter__(self) -> LightFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
