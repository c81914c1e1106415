"""The embedded MQTT broker: amqtt on loopback, for a server started without ``--broker``.

amqtt is asyncio-based; it runs in its own thread with its own event loop so it neither
blocks nor depends on uvicorn's loop. It listens on 127.0.0.1 only and accepts anonymous
clients, which is why it is for trying edgefleet on one machine: it enforces no per-device
ACL. Production fleets point ``--broker`` at Mosquitto (whose password and ACL files the
server writes) or a broker cluster.

This module does not configure TLS or persistence; it is deliberately the smallest broker
that lets a laptop demo work end to end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An amqtt broker in a background thread. ``start()`` returns once it accepts connections."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_loopback_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="edgefleet-embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BrokerError(f"the embedded MQTT broker did not start within {timeout:.0f}s",
                              fix="pass --broker mqtt://HOST:PORT to use an external broker")
        if self._error is not None:
            raise BrokerError(f"the embedded MQTT broker failed to start on port {self.port}: {self._error}",
                              fix="pass --broker mqtt://HOST:PORT to use an external broker") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_broker())
        except BaseException as exc:  # reported to start(); the thread then ends
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start_broker(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()

    def stop(self, timeout: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            future.result(timeout)
        except Exception as exc:  # shutting down anyway; a noisy broker must not block exit
            log.warning("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
