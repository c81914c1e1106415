"""The MQTT link against a real Mosquitto: callbacks, the persistent session, reported state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.link import Backoff, Link
from edgefleet import topics
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import Observer, eventually, free_port

DEVICE = "dev-link"


class Inbox:
    def __init__(self) -> None:
        self.desired: list[bytes] = []
        self.commands: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_desired(self, payload: bytes) -> None:
        with self.lock:
            self.desired.append(payload)

    def on_command(self, command: dict[str, Any]) -> None:
        if command["command"] == "explode":
            raise RuntimeError("a handler bug must not end the link")
        with self.lock:
            self.commands.append(command)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def link(mosquitto: MosquittoProcess, inbox: Inbox) -> Iterator[Link]:
    running = Link(DEVICE, mosquitto.url, on_desired=inbox.on_desired, on_command=inbox.on_command,
                   backoff=Backoff(initial=0.1, maximum=0.5))
    running.set_reported({"models": {}, "update": {"state": "idle"}})
    running.start()
    assert running.wait_connected(10)
    yield running
    running.stop()


def test_desired_and_commands_reach_their_callbacks(link: Link, inbox: Inbox, mosquitto: MosquittoProcess) -> None:
    server = Observer(mosquitto.port, topics.events(DEVICE))
    try:
        server.publish(topics.desired(DEVICE), b'{"signed": {}, "signatures": []}', retain=True)
        server.publish(topics.commands(DEVICE), b'{"command": "explode"}')
        server.publish(topics.commands(DEVICE), b"not json")
        server.publish(topics.commands(DEVICE), b'{"command": "report", "args": {}}')
        assert eventually(lambda: inbox.desired and inbox.commands)
        assert inbox.desired == [b'{"signed": {}, "signatures": []}']
        assert inbox.commands == [{"command": "report", "args": {}}]
        assert link.publish("events", {"device_id": DEVICE, "event": "staged"})
        assert eventually(lambda: server.last() == {"device_id": DEVICE, "event": "staged"})
    finally:
        server.close()


def test_reported_is_retained_republished_on_change_and_offline_on_stop(link: Link, mosquitto: MosquittoProcess) -> None:
    # published at the connect, and again once `desired` is granted on this fresh session: observe after both
    assert link.subscribed.wait(10)
    observer = Observer(mosquitto.port, topics.reported(DEVICE))
    try:
        assert eventually(lambda: (m := observer.last()) and m["online"] is True and m["update"] == {"state": "idle"})
        count = len(observer.messages)
        link.set_reported({"models": {}, "update": {"state": "idle"}})  # unchanged: not sent again
        link.set_reported({"models": {"iris": {"version": "1.0.0", "sha256": "a" * 64}}, "update": {"state": "idle"}})
        assert eventually(lambda: (observer.last() or {}).get("models", {}).get("iris"))
        assert len(observer.messages) == count + 1
        link.stop()
        assert eventually(lambda: observer.last() == {"device_id": DEVICE, "online": False})
    finally:
        observer.close()


def test_persistent_session_delivers_what_was_sent_while_offline(mosquitto: MosquittoProcess, inbox: Inbox) -> None:
    first = Link(DEVICE, mosquitto.url, on_desired=inbox.on_desired, backoff=Backoff(initial=0.1, maximum=0.5))
    first.start()
    assert first.wait_connected(10)
    first.stop()
    server = Observer(mosquitto.port, topics.events(DEVICE))
    try:
        # Not retained: only the broker's session for this client id can hold it for the device.
        server.publish(topics.desired(DEVICE), b'{"while": "offline"}')
    finally:
        server.close()
    second = Link(DEVICE, mosquitto.url, on_desired=inbox.on_desired, backoff=Backoff(initial=0.1, maximum=0.5))
    second.start()
    try:
        assert eventually(lambda: inbox.desired == [b'{"while": "offline"}'])
    finally:
        second.stop()


def test_link_reconnects_after_the_broker_restarts(link: Link, mosquitto: MosquittoProcess) -> None:
    connects = link.connects
    mosquitto.restart()
    assert eventually(lambda: link.connects > connects and link.connected, timeout=15)
    observer = Observer(mosquitto.port, topics.reported(DEVICE))
    try:
        # the broker forgot everything (no persistence): reported is retained again on reconnect
        assert eventually(lambda: (observer.last() or {}).get("online") is True)
    finally:
        observer.close()



def test_events_published_while_offline_are_sent_once_connected(tmp_path: Path) -> None:
    port = free_port()
    # Retries come 1-2 s apart, so the observer below subscribes before the link reconnects.
    link = Link(DEVICE, f"mqtt://127.0.0.1:{port}", backoff=Backoff(initial=2.0, maximum=2.0))
    link.start()
    try:
        assert not link.wait_connected(0.3)
        assert link.publish("events", {"device_id": DEVICE, "event": "committed"})  # no broker: queued
        with MosquittoProcess(None, tmp_path / "late", port=port, auth=False, persistence=False) as broker:
            observer = Observer(broker.port, topics.events(DEVICE))
            try:
                assert eventually(lambda: observer.last() == {"device_id": DEVICE, "event": "committed"}, timeout=10)
            finally:
                observer.close()
    finally:
        link.stop()
