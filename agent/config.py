"""The daemon's settings (``agent.toml``): where the API listens and what the daemon turns on.

Every key is optional; an unknown key or a wrong type is an error naming the key and the fix
(a typo would otherwise be silently ignored on a device nobody looks at). Command-line flags
override the file. It holds no identity or secrets: those live in the state directory.

    tcp = false                   also serve on TCP (http_host:http_port): off unless asked for, since
                                  every local user can reach a loopback port (docs/agent.md)
    http_host = "127.0.0.1"       TCP address of the local API ("" disables TCP)
    http_port = 8765              0 picks a free port
    unix_socket = true            serve on SOCKET_DIR/agent.sock (0660, the directory's group)
    socket_dir = ""               where the socket lives; "" is the state directory (0700: the
                                  agent's user alone); e.g. "/run/edgefleet" (0750) for its group

A file that sets ``http_host`` or ``http_port`` without ``tcp`` asks for TCP, as the
``--http-host``/``--http-port`` flags do; ``http_host = ""`` turns it off.
    max_body_bytes = 8388608      larger request bodies get 413
    max_rows = 10000              more rows in one request get 413
    mqtt = true                   connect to the broker when the device is enrolled
    broker_url = ""               the brokers to use instead of the ones enrollment gave (identity.json),
                                  several separated by ',' and tried in turn: "mqtt://a:1883,b:1883"
    keepalive_s = 30              MQTT keepalive
    shutdown_timeout_s = 10       how long SIGTERM waits for in-flight requests
    log_level = "INFO"
    telemetry = true              keep serving metrics, drift counts and feedback; report them over MQTT
    telemetry_interval_s = 60     one telemetry batch per interval (counts are per interval)
    telemetry_drift_every = 1     feature drift counts ride on every Nth batch (1: the server is at most one interval behind)
    outbox_max_bytes = 8388608    STATE_DIR/outbox.sqlite caps: over either, the OLDEST batches are
    outbox_max_rows = 20000       dropped and the count of them is reported in the next batch
    probation_s = 60              how long a newly activated model is watched before it is committed
    probation_min_requests = 20   requests it must serve first (an idle device commits after 5 x probation_s)
    probation_max_error_rate = 0.02
    probation_max_restarts = 3    agent restarts inside probation that mean a crash loop: roll back
    update_tick_s = 1.0           how often the update path judges probation and retries
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from edgefleet.brokers import parse_broker_urls
from edgefleet.errors import BrokerUrlError
from edgefleet.telemetry import DEFAULT_DRIFT_EVERY, DEFAULT_INTERVAL_S

DEFAULT_HTTP_PORT = 8765
SOCKET_NAME = "agent.sock"


@dataclass(frozen=True)
class AgentConfig:
    tcp: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    unix_socket: bool = True
    socket_dir: str = ""
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000
    mqtt: bool = True
    broker_url: str = ""
    keepalive_s: int = 30
    shutdown_timeout_s: float = 10.0
    log_level: str = "INFO"
    telemetry: bool = True
    telemetry_interval_s: float = DEFAULT_INTERVAL_S
    telemetry_drift_every: int = DEFAULT_DRIFT_EVERY
    outbox_max_bytes: int = 8 * 1024 * 1024
    outbox_max_rows: int = 20_000
    probation_s: float = 60.0
    probation_min_requests: int = 20
    probation_max_error_rate: float = 0.02
    probation_max_restarts: int = 3
    update_tick_s: float = 1.0
    # A candidate (shadow/canary, issue 18) loads a second model: the agent's RSS with it must stay
    # within this share of the profile's ram_mb (agent/memory.py).
    candidate_ram_share: float = 0.5
    shadow_queue_size: int = 16
    shadow_cpu_share: float = 0.1  # at most this share of one core runs the shadow candidate (agent/mirror.py)

    def __post_init__(self) -> None:
        if self.probation_s < 0 or self.probation_min_requests < 0 or self.probation_max_restarts < 1:
            raise AgentError("probation_s and probation_min_requests must be >= 0 and probation_max_restarts >= 1",
                             fix="e.g. probation_s = 60, probation_min_requests = 20, probation_max_restarts = 3")
        if not 0 <= self.probation_max_error_rate <= 1 or not self.update_tick_s > 0:
            raise AgentError("probation_max_error_rate must be in [0, 1] and update_tick_s positive",
                             fix="e.g. probation_max_error_rate = 0.02, update_tick_s = 1.0")
        if not 0 < self.candidate_ram_share <= 1 or self.shadow_queue_size < 1 or not 0 < self.shadow_cpu_share <= 1:
            raise AgentError(f"candidate_ram_share = {self.candidate_ram_share} and shadow_cpu_share = "
                             f"{self.shadow_cpu_share} must be in (0, 1] and shadow_queue_size = "
                             f"{self.shadow_queue_size} at least 1",
                             fix="e.g. candidate_ram_share = 0.5 (half the profile's ram_mb), shadow_cpu_share = 0.1, "
                                 "shadow_queue_size = 16")
        if not 0 <= self.http_port <= 65535:
            raise AgentError(f"http_port {self.http_port} is not a TCP port", fix="use 0..65535 (0 picks a free port)")
        if self.max_body_bytes <= 0 or self.max_rows <= 0 or self.keepalive_s <= 0 or self.shutdown_timeout_s < 0:
            raise AgentError("max_body_bytes, max_rows and keepalive_s must be positive")
        if not self.telemetry_interval_s > 0:
            raise AgentError(f"telemetry_interval_s = {self.telemetry_interval_s} must be positive",
                             fix="e.g. telemetry_interval_s = 60 (seconds between telemetry batches)")
        if self.telemetry_drift_every < 1:
            raise AgentError(f"telemetry_drift_every = {self.telemetry_drift_every} must be at least 1",
                             fix="1 (the default) sends feature drift counts on every batch, 10 on every 10th (a third of the bytes)")
        if self.outbox_max_bytes <= 0 or self.outbox_max_rows <= 0:
            raise AgentError("outbox_max_bytes and outbox_max_rows must be positive",
                             fix="e.g. outbox_max_bytes = 8388608 and outbox_max_rows = 20000")
        if self.broker_url:
            try:
                parse_broker_urls(self.broker_url)
            except BrokerUrlError as exc:
                raise AgentError(f"broker_url: {exc.message}", fix=exc.fix) from exc
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise AgentError(f"log_level {self.log_level!r} is not a level", fix="use DEBUG, INFO, WARNING or ERROR")

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> AgentConfig:
        source = Path(path)
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise AgentError(f"config file {source} does not exist", fix="check --config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise AgentError(f"config file {source} is not valid TOML: {exc}", fix="fix the syntax at that line") from exc
        return cls.from_dict(data, str(source))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "agent config") -> AgentConfig:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise AgentError(f"{source}: unknown key {key!r}", fix=f"use one of: {', '.join(sorted(known))}")
            default = known[key].default
            wanted: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, wanted):
                raise AgentError(f"{source}: {key} = {value!r} should be a {type(default).__name__}",
                                 fix=f"e.g. {key} = {default!r}".replace("True", "true").replace("False", "false"))
            values[key] = value
        return cls(**_tcp_asked(values))

    def with_overrides(self, **overrides: Any) -> AgentConfig:
        """These settings with the given ones (None: keep), e.g. from command-line flags."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **_tcp_asked(given))

    @property
    def tcp_host(self) -> str | None:
        """The TCP address to listen on, or None when TCP is off."""
        return self.http_host if self.tcp and self.http_host else None

    def socket_file(self, state_dir: str | os.PathLike[str]) -> Path:
        """Where the Unix socket lives: ``socket_dir/agent.sock``, by default in the state directory."""
        return Path(self.socket_dir or state_dir) / SOCKET_NAME


def _tcp_asked(values: dict[str, Any]) -> dict[str, Any]:
    """Naming a TCP address or port asks for TCP (``tcp`` not given); an empty address turns it off."""
    if "tcp" not in values and ("http_host" in values or "http_port" in values):
        return {**values, "tcp": values.get("http_host", "127.0.0.1") != ""}
    return values
