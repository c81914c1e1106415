"""More devices on the NATS cluster than nats-server's default consumer limit lets subscribe.

Each QoS 1 subscription of an MQTT session is one JetStream consumer on the gateway's
``$MQTT_msgs`` stream, and nats-server (2.15) caps a stream that sets no limit of its own at
1,000 consumers. A device holds two (``desired``, ``commands``), so without the recipe's
``default_max_consumers`` the 501st device's SUBSCRIBE was refused: it connected, was never
told, and never heard of its assignment (a 1,000-device rollout stalled with 695 devices idle).
Here 550 light devices, each with a retained ``desired`` waiting on another node, must all
receive it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet import topics
from simulation.fleet import wait_until
from simulation.lightdevice import DeviceIdentity, LightFleet
from simulation.nats import NatsCluster
from tests.support.mqtt import MqttProbe
from tests.support.nats import nats_cluster

DEVICES = 550  # 1,100 consumers: past the default 1,000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    yield from nats_cluster(tmp_path)


def _msgs_consumers(cluster: NatsCluster) -> int:
    import nats

    async def ask() -> int:
        client = await nats.connect(cluster.nats_urls[0])
        try:
            reply = await client.request("$JS.API.STREAM.INFO.$MQTT_msgs", b"", timeout=10)
        finally:
            await client.close()
        return int(json.loads(reply.data)["state"]["consumer_count"])

    return asyncio.run(ask())


@pytest.mark.slow
def test_every_device_past_the_default_consumer_limit_gets_its_retained_desired(cluster: NatsCluster) -> None:
    ids = [f"cap-{i:04d}" for i in range(DEVICES)]
    server = MqttProbe(cluster.nodes[1].ports.mqtt, "probe-publisher")
    for device_id in ids:  # an unsigned document: the device refuses it, which proves it arrived
        server.publish(topics.desired(device_id), b'{"not": "an assignment"}', retain=True)
    server.close()
    fleet = LightFleet(cluster.mqtt_urls[0])
    for device_id in ids:
        fleet.add(DeviceIdentity(device_id, "p", "AAAA"))
    fleet.start()
    try:
        fleet.wait_connected(60)
        missing = lambda: [d for d in ids if not fleet.devices[d].refusals]  # noqa: E731
        wait_until(lambda: not missing(), 150, "every device to receive its retained desired", every=1.0,
                   explain=lambda: f"{len(missing())} of {DEVICES} never did; $MQTT_msgs has "
                                   f"{_msgs_consumers(cluster)} consumers\n{cluster.nodes[0].log_tail(5)}")
        assert _msgs_consumers(cluster) >= 2 * DEVICES
    finally:
        fleet.stop()
