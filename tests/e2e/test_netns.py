"""A device in its own network namespace behind a veth link: cutting the link is a real network loss.

Needs `ip netns` (root, or CAP_NET_ADMIN); skipped with the reason where namespaces are not allowed.
The agent runs under `ip netns exec`; the broker also listens on the host end of the veth link and
the server hands out the host end's address, so every byte the device exchanges crosses the link.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.fleet import FleetError, free_port, wait_until
from tests.e2e.stack import Stack

pytestmark = pytest.mark.mosquitto


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class Namespace:
    def __init__(self) -> None:
        tag = random.randrange(1, 250)
        self.name = f"efns-{tag}-{random.randrange(10**6)}"
        self.host_if, self.ns_if = f"efh{tag}x{random.randrange(1000)}", f"efn{tag}x{random.randrange(1000)}"
        self.host_ip, self.ns_ip = f"10.231.{tag}.1", f"10.231.{tag}.2"

    def create(self) -> None:
        steps = [
            ("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("link", "set", self.ns_if, "netns", self.name),
            ("addr", "add", f"{self.host_ip}/30", "dev", self.host_if),
            ("link", "set", self.host_if, "up"),
            ("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
            ("netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up"),
            ("netns", "exec", self.name, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"

    def link(self, up: bool) -> None:
        done = ip("link", "set", self.host_if, "up" if up else "down")
        assert done.returncode == 0, done.stderr

    def delete(self) -> None:
        ip("netns", "del", self.name)
        ip("link", "del", self.host_if)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    ns = Namespace()
    made = ip("netns", "add", ns.name)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not allowed here: ip netns add: {made.stderr.strip()}")
    try:
        ns.create()
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def stack(namespace: Namespace, tmp_path: Path) -> Iterator[Stack]:
    port, mqtt_port = free_port(), free_port()
    made = Stack(tmp_path, broker_hosts=[namespace.host_ip], server_port=port, broker_port=mqtt_port, server_env={
        "EDGEFLEET_HOST": "0.0.0.0", "EDGEFLEET_PUBLIC_URL": f"http://{namespace.host_ip}:{port}",
        "EDGEFLEET_BROKER_PUBLIC_URL": f"mqtt://{namespace.host_ip}:{mqtt_port}"})
    try:
        yield made
    finally:
        made.close()


def assign_during_a_cut(stack: Stack, namespace: Namespace, tmp_path: Path) -> tuple[str, str]:
    """A device in the namespace runs 1.0.0; its link is cut; 1.1.0 is assigned; the link returns.

    Returns (device id, the 1.1.0 rollout id) once the device is back online.
    """
    # A short keepalive so the broker notices the cut link (and fires the last will) in seconds.
    (device,) = stack.add_agents(1, wrapper=["ip", "netns", "exec", namespace.name], settings={"keepalive_s": 2})
    stack.push("1.0.0")
    first = stack.rollout("1.0.0")
    stack.wait_state(first["id"], "completed", timeout=60)  # the bundle came over the veth link

    namespace.link(up=False)
    wait_until(lambda: stack.online() == 0, 30, "the broker to notice the cut link (the device's last will)")
    stack.push("1.1.0")
    second = stack.rollout("1.1.0")
    # For 3 s the cut-off device must be held, not failed: polled throughout that window.
    with pytest.raises(FleetError):
        wait_until(lambda: (v := stack.view(second["id"]))["state"] != "running"
                   or [r["status"] for r in v["device_records"]] != ["assigned"], 3.0,
                   "the rollout to move on while the device is cut off", every=0.1)
    view = stack.view(second["id"])
    assert view["state"] == "running"
    assert [r["status"] for r in view["device_records"]] == ["assigned"]  # held, not failed, while cut off
    assert stack.versions()[device.device_id] == "1.0.0"

    namespace.link(up=True)
    wait_until(lambda: stack.online() == 1, 60, "the device to reconnect over the restored link")
    return device.device_id, str(second["id"])


def test_a_cut_link_takes_the_device_offline_and_it_returns(namespace: Namespace, stack: Stack,
                                                            tmp_path: Path) -> None:
    assign_during_a_cut(stack, namespace, tmp_path)
