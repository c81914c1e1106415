"""Device messages from a NATS JetStream stream, shared by every server replica, acked after commit.

On a NATS cluster (docs/deployment.md "Scaling out") devices still speak MQTT 3.1.1 to any
node; the node's MQTT gateway turns ``edgefleet/v1/devices/{id}/telemetry`` into the NATS
subject ``edgefleet.v1.devices.{id}.telemetry`` (``/`` becomes ``.``, ``.`` becomes ``//``).
The stream ``EDGEFLEET_DEVICES`` captures the three device-to-server kinds (``telemetry``,
``events``, ``reported``), replicated on ``replicas`` nodes, so a node may die with messages
in it. ONE durable pull consumer (``edgefleet-server``) is shared by all replicas: JetStream
hands each message to one fetcher, so each replica processes its own share (no MQTT
``$share`` subscription involved: issue 13 found one granted and never delivered on NATS 2.9).

Each message fetched goes to ``handler(topic, payload, ack)``: the server's handler with
manual acks (``TelemetryIngest.handler``, the same one ``FleetMqtt(manual_ack=True)`` drives),
which calls ``ack`` once the message is committed (telemetry and events by the writer, a
``reported`` by presence) or deliberately dropped (refused). Only then is it acked to
JetStream. A replica SIGKILLed at any point before that leaves the message unacked: JetStream
delivers it again after ``ack_wait`` to whichever replica fetches next, and the database's
unique keys turn a message stored twice into one row. At most ``window`` messages per replica
are fetched and not yet acked, so a slow database slows the fetching instead of filling memory.

Limits, said where they bite:
- The MQTT gateway acknowledges a device's QoS 1 PUBLISH once the node has taken it, not
  once the stream's replicas have it; a node killed in that instant can lose that message.
- This module reads; the server still publishes ``desired`` (retained) and ``commands`` over
  MQTT to a node (``FleetMqtt``), since a plain NATS publish cannot set MQTT's retained flag.

The subject mapping and the stream and consumer settings are pure (``mqtt_topic``,
``stream_subjects``); ``JetStreamIngest`` owns the connection, its thread and its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.topics import DEVICE_TO_SERVER, PREFIX
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)

STREAM = "EDGEFLEET_DEVICES"
DURABLE = "edgefleet-server"
DEFAULT_BATCH = 1000
DEFAULT_ACK_WAIT_S = 30.0
# Unacked messages the consumer lets out at once, all replicas together: enough for several
# replicas each holding a full batch, so the window never caps the rate.
MAX_ACK_PENDING = 20_000
MAX_AGE_S = 7 * 24 * 3600  # a stream nobody consumes keeps a week, then drops the oldest
COMMIT_TIMEOUT_S = 20.0  # below ack_wait: a batch nak'ed by us, not redelivered behind our back
NAK_DELAY_S = 2.0

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
# fleet_server.broker.connection's manual-ack seam: the handler calls ack once the message is
# stored (or deliberately dropped), from any thread.
AckingHandler = Callable[[str, bytes, Ack], None]


def nats_subject(topic: str) -> str:
    """The NATS subject the MQTT gateway publishes an MQTT topic on (``.`` -> ``//``, ``/`` -> ``.``)."""
    return "//".join(part.replace("/", ".") for part in topic.split("."))


def mqtt_topic(subject: str) -> str:
    """The MQTT topic a NATS subject came from: ``nats_subject`` undone."""
    return ".".join(part.replace(".", "/") for part in subject.split("//"))


def stream_subjects(kinds: Sequence[str] = DEVICE_TO_SERVER) -> list[str]:
    for kind in kinds:
        if kind not in DEVICE_TO_SERVER:
            raise ValueError(f"servers do not consume {kind!r}")
    return [nats_subject(f"{PREFIX}/devices/") + "*." + kind for kind in kinds]


def parse_servers(value: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (or space separated) as a list; BrokerError if one is not nats://."""
    servers = [s for s in value.replace(",", " ").split() if s]
    if not servers or any(not s.startswith(("nats://", "tls://")) for s in servers):
        raise BrokerError(f"NATS URL list {value!r} is not nats://HOST:PORT[,nats://HOST:PORT...]",
                          fix="e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
    return servers


@dataclass(frozen=True)
class JetStreamCounts:
    fetched: int
    acked: int
    redelivered: int  # messages that had been delivered before (to us or to a replica that died)
    in_flight: int  # fetched, not acked yet


class JetStreamIngest:
    """Fetch, hand over, ack once stored: on a thread with its own event loop.

    ``handler(topic, payload, ack)`` gets every message with its ``ack``, to call from any
    thread once the message is committed (or deliberately dropped): the same seam as
    ``FleetMqtt``'s manual acks. At most ``window`` messages are fetched and not yet acked;
    the fetcher waits below that. ``start()`` returns at once (an unreachable cluster is
    retried); ``wait_connected`` waits for the stream and consumer to exist. ``stop()``
    leaves what is unacked to JetStream, which delivers it again.
    """

    def __init__(self, servers: Sequence[str], *, handler: AckingHandler, replicas: int = 3,
                 batch: int = DEFAULT_BATCH, window: int = 4 * DEFAULT_BATCH,
                 ack_wait_s: float = DEFAULT_ACK_WAIT_S, name: str = "edgefleet-server",
                 user: str | None = None, password: str | None = None) -> None:
        if not 1 <= replicas <= 5:
            raise BrokerError(f"stream replicas {replicas} is out of range", fix="use 1 to 5 (3 on a three-node cluster)")
        if not 0 < batch <= window:
            raise BrokerError("the fetch batch must be positive and at most the window")
        self.servers = list(servers)
        self.handler = handler
        self.replicas = replicas
        self.batch = batch
        self.window = window
        self.ack_wait_s = ack_wait_s
        self.name = name
        self._login = {"user": user, "password": password} if user else {}  # through the auth callout
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-jetstream", daemon=True)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("fetched", "acked", "redelivered"), 0)
        # time.monotonic() of the last message handed to the handler (FleetMqtt has the same, for
        # fleet_server.telemetry.liveness: a consumer that never delivers is reported).
        self.last_delivery: float | None = None
        self._acks: list[Any] = []  # messages whose ack was called, waiting for the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()  # acks are waiting (set from the writers' threads)
        self._room = asyncio.Event()  # acks were sent: the window has room again

    def start(self) -> JetStreamIngest:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._poke()
        self._thread.join(timeout)

    def counts(self) -> JetStreamCounts:
        with self._lock:
            counts = dict(self._counts)
        return JetStreamCounts(**counts, in_flight=counts["fetched"] - counts["acked"])

    def _add(self, **deltas: int) -> None:
        with self._lock:
            for key, n in deltas.items():
                self._counts[key] += n

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just closed
                loop.call_soon_threadsafe(self._wake.set)

    def _ack_later(self, message: Any) -> Ack:
        done = threading.Event()

        def ack() -> None:
            if done.is_set():
                return  # twice is once
            done.set()
            with self._lock:
                self._acks.append(message)
                first = len(self._acks) == 1
            if first:  # one wake-up per burst of acks, not one per message
                self._poke()

        return ack

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import nats

        self._loop = asyncio.get_running_loop()

        async def disconnected() -> None:
            log.warning("disconnected from NATS; reconnecting to one of %s", ", ".join(self.servers))

        async def reconnected() -> None:
            log.info("reconnected to NATS")

        async def error(exc: Exception) -> None:
            # nats-py reports every failed reconnect here (a node being down); the callbacks
            # above say what matters once.
            log.debug("NATS client: %s", exc)

        while not self._stop.is_set():
            try:
                nc = await nats.connect(self.servers, name=self.name, max_reconnect_attempts=-1,
                                        reconnect_time_wait=0.5, connect_timeout=2,
                                        disconnected_cb=disconnected, reconnected_cb=reconnected,
                                        error_cb=error, **self._login)
            except Exception as exc:  # nats-py raises several kinds; all mean "not yet"
                log.warning("cannot connect to NATS at %s: %s; retrying", ", ".join(self.servers), exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._consume(nc)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await self._send_acks()
                    await nc.flush(timeout=2)
                with contextlib.suppress(Exception):
                    # close, not drain: draining a pull subscription waits out its pending fetch.
                    await nc.close()

    async def _ensure(self, js: Any) -> Any:
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            # Work-queue retention: an acked message is gone, so the stream holds only what no
            # replica has committed yet.
            await js.add_stream(StreamConfig(name=STREAM, subjects=stream_subjects(),
                                             retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                             num_replicas=self.replicas, max_age=MAX_AGE_S))
            log.info("created JetStream stream %s (%d replicas)", STREAM, self.replicas)
        try:
            await js.consumer_info(STREAM, DURABLE)
        except NotFoundError:
            await js.add_consumer(STREAM, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                                                         ack_wait=self.ack_wait_s, max_ack_pending=MAX_ACK_PENDING,
                                                         max_waiting=512))
        return await js.pull_subscribe_bind(DURABLE, STREAM)

    async def _consume(self, nc: Any) -> None:
        import nats.errors
        import nats.js.errors

        js = nc.jetstream(timeout=5)
        while not self._stop.is_set():
            try:
                sub = await self._ensure(js)
                break
            except (TimeoutError, nats.errors.Error) as exc:
                # A cluster that just lost a node answers "no responders" or times out until
                # its meta leader is re-elected.
                log.warning("JetStream stream %s not ready: %s; retrying", STREAM, exc)
                await asyncio.sleep(1.0)
        else:
            return
        self.connected.set()
        log.info("consuming %s through durable consumer %s", STREAM, DURABLE)
        acker = asyncio.create_task(self._ack_loop())
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                room = min(self.batch, self.window - self.counts().in_flight)
                if room <= 0:
                    # The window is full: wait for acks (the writers are behind, or the database is).
                    self._room.clear()
                    if self.window - self.counts().in_flight <= 0:
                        await _wait(self._room, 1.0)
                    continue
                try:
                    messages = await sub.fetch(room, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    # A node died: "service unavailable" until the stream has a new leader
                    # (seconds). Said once when it starts, and once when it ends.
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.warning("fetching from %s failed: %s; retrying", STREAM, exc)
                    await asyncio.sleep(0.5)
                    continue
                if failing_since is not None:
                    log.info("fetching from %s again after %.1f s", STREAM, time.monotonic() - failing_since)
                    failing_since = None
                if messages:
                    again = sum(1 for m in messages if m.metadata.num_delivered > 1)
                    self._add(fetched=len(messages), redelivered=again)
                    if again:  # a replica (or this one, through a node that died) took them and never acked
                        log.info("%d of %d messages fetched are redeliveries", again, len(messages))
                    # The handler may block (a full writer queue pushes back): off the event
                    # loop, so nats-py keeps answering the cluster's pings meanwhile.
                    await asyncio.to_thread(self._hand_over, messages)
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker

    async def _ack_loop(self) -> None:
        while True:
            await _wait(self._wake, 0.5)
            self._wake.clear()
            await self._send_acks()

    async def _send_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
        for message in acks:
            await message.ack()  # a publish to its reply subject; a lost ack means a redelivery, deduplicated
        if acks:
            self._add(acked=len(acks))
            self._room.set()

    def _hand_over(self, messages: list[Any]) -> None:
        self.last_delivery = time.monotonic()
        for message in messages:
            ack = self._ack_later(message)
            try:
                self.handler(mqtt_topic(message.subject), message.data, ack)
            except Exception:  # one bad message must not stall the stream; it comes back after ack_wait
                log.exception("handling %s failed", message.subject)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
