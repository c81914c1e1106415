"""The server's JetStream consumer on a real three-node cluster: one durable consumer, two replicas.

Devices publish over MQTT to any node; ``JetStreamIngest`` replicas fetch from the stream and
ack only when the handler says the message is stored. Each message is handled by one replica;
a replica that dies (or never acks) leaves its messages to the other after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from edgefleet import topics
from fleet_server.broker.nats_ingest import (
    STREAM,
    JetStreamIngest,
    mqtt_topic,
    nats_subject,
    stream_subjects,
)
from simulation.fleet import wait_until
from simulation.nats import NatsCluster
from tests.support.mqtt import MqttProbe
from tests.support.nats import nats_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from nats_cluster(tmp_path_factory.mktemp("nats"))


@pytest.fixture
def fresh_stream(cluster: NatsCluster) -> Iterator[NatsCluster]:
    """No stream or consumer left from another test (each creates its own, with its ack_wait)."""
    async def delete() -> None:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(cluster.nats_urls)
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(STREAM)
        await nc.close()

    asyncio.run(delete())
    yield cluster


class Recorder:
    """A handler that keeps what it got, per replica, and acks at once (or never, when told)."""

    def __init__(self, name: str, *, ack: bool = True) -> None:
        self.name = name
        self.ack = ack
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes, ack: object) -> None:
        with self.lock:
            self.got.append((topic, payload))
        if self.ack:
            ack()  # type: ignore[operator]


def test_subject_mapping_round_trips() -> None:
    topic = topics.telemetry("dev-1_a")
    assert nats_subject(topic) == "edgefleet.v1.devices.dev-1_a.telemetry"
    assert mqtt_topic(nats_subject(topic)) == topic
    assert mqtt_topic(nats_subject("a.b/c")) == "a.b/c"
    assert stream_subjects() == [f"edgefleet.v1.devices.*.{k}" for k in topics.DEVICE_TO_SERVER]


def publish(port: int, count: int, client_id: str) -> None:
    device = MqttProbe(port, client_id)
    infos = [device.client.publish(topics.telemetry(f"dev-{i % 20}"), f"m{i}".encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    device.close()


def test_two_replicas_share_one_durable_consumer_each_message_once(fresh_stream: NatsCluster) -> None:
    cluster = fresh_stream
    first, second = Recorder("first"), Recorder("second")
    replicas = [JetStreamIngest(cluster.nats_urls[i:] + cluster.nats_urls[:i], handler=rec, batch=50, window=200)
                for i, rec in enumerate((first, second))]
    for replica in replicas:
        replica.start()
    try:
        assert all(r.wait_connected(30) for r in replicas)
        count = 2000
        publish(cluster.nodes[2].ports.mqtt, count, "publisher-1")
        wait_until(lambda: len(first.got) + len(second.got) >= count, 60, f"{count} messages handled",
                   explain=lambda: f"{len(first.got)} + {len(second.got)}")
        wait_until(lambda: all(r.counts().in_flight == 0 for r in replicas), 10, "every message acked")
        handled = Counter(p for _, p in first.got + second.got)
        assert len(handled) == count and set(handled.values()) == {1}, "a message was handled twice or never"
        assert first.got and second.got, "one replica did all the work"
        assert {t for t, _ in first.got + second.got} <= {topics.telemetry(f"dev-{i}") for i in range(20)}
    finally:
        for replica in replicas:
            replica.stop()


def test_what_a_replica_never_acked_goes_to_the_other(fresh_stream: NatsCluster) -> None:
    cluster = fresh_stream
    dead = Recorder("dead", ack=False)  # took its share and died before its commit
    dying = JetStreamIngest(cluster.nats_urls, handler=dead, batch=100, window=100, ack_wait_s=2)
    dying.start()
    assert dying.wait_connected(30)
    publish(cluster.nodes[1].ports.mqtt, 100, "publisher-2")
    wait_until(lambda: len(dead.got) == 100, 30, "the first replica to take the messages")
    dying.stop()
    alive = Recorder("alive")
    survivor = JetStreamIngest(cluster.nats_urls, handler=alive, batch=100, window=100, ack_wait_s=2)
    survivor.start()
    try:
        wait_until(lambda: len(alive.got) == 100, 30, "the unacked messages to reach the other replica",
                   explain=lambda: str(survivor.counts()))
        assert Counter(p for _, p in alive.got) == Counter(p for _, p in dead.got)
        assert survivor.counts().redelivered == 100
    finally:
        survivor.stop()
