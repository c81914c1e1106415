"""Server configuration: one frozen ``ServerConfig`` built from flags, environment, file and defaults.

Precedence, highest first: command-line flags, ``EDGEFLEET_*`` environment variables, the TOML
config file (``--config`` or ``$EDGEFLEET_CONFIG``; keys at top level or under ``[server]``), then
the defaults below. Every value is checked here, so a typo in a variable or file key is an error
naming it rather than a silently ignored setting.

This module reads the config file and nothing else: it does not create the data directory, the
admin token or the keys (``fleet_server.context`` does that at start).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.brokers import parse_broker_urls
from edgefleet.errors import BrokerUrlError
from fleet_server.broker.connection import check_replica_id
from fleet_server.errors import ConfigError
from fleet_server.telemetry.alerts import AlertConfig, load_alert_config

BROKER_ACCOUNTS = ("mosquitto-files", "mosquitto-dynsec", "mosquitto-http", "unmanaged")
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_ENROLLMENT_TTL = 24 * 3600
MAX_ENROLLMENT_TTL = 30 * 24 * 3600


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start. Paths are absolute once built by ``load_config``."""

    data_dir: Path = Path("edgefleet-data")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None  # None: SQLite file data_dir/edgefleet.sqlite
    broker_url: str | None = None  # None: start the embedded amqtt broker on loopback
    broker_public_url: str | None = None  # what devices are told; default: broker_url
    broker_ca_file: Path | None = None  # CA bundle for an mqtts:// broker; None: the system CAs
    public_url: str | None = None  # what devices use to reach this server; default http://host:port
    admin_token: str | None = None  # None: read or create data_dir/admin-token
    # The console's read-only login (docs/console.md); None: only the admin token logs in.
    viewer_token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    enrollment_ttl_seconds: int = DEFAULT_ENROLLMENT_TTL
    mqtt_username: str = "edgefleet-server"
    mqtt_password: str | None = None  # None: read or create data_dir/server-mqtt.json
    # This replica's own MQTT client id, the same at every start (a persistent session on an
    # external broker); None: HOSTNAME-PORT. Every replica needs a different one.
    replica_id: str | None = None
    # The NATS cluster backend (docs/deployment.md "Scaling out"): its client URLs, comma separated.
    # When set, device messages are read from the JetStream stream through one durable consumer
    # shared by every replica (fleet_server.broker.nats_ingest) and acked after the commit, and
    # broker_url names a node's MQTT port, used to publish desired and commands. None: MQTT alone.
    nats_url: str | None = None
    nats_stream_replicas: int = 3  # nodes that keep the stream: 3 on a three-node cluster
    # Per-device permissions on the cluster: this server answers the nodes' auth callout as this
    # login (the nodes' auth_users; fleet_server.broker.nats_auth). None: the nodes decide alone.
    nats_callout_user: str | None = None
    nats_callout_password: str | None = None
    # A login in the nodes' SYS account: a revoked device's live connections are closed at once
    # (else it is refused at its next connect). None: not closed.
    nats_system_user: str | None = None
    nats_system_password: str | None = None
    # Who keeps the devices' broker accounts (docs/deployment.md "Broker accounts"):
    # "mosquitto-files" (mosquitto_dir's password and ACL files, rewritten whole), "mosquitto-dynsec"
    # (Mosquitto's dynamic-security plugin, one account changed per enrollment over MQTT) or
    # "mosquitto-http" (the edgefleet Mosquitto plugin asks this server at each CONNECT: nothing
    # written at enrollment, fleet_server.broker.mosquitto_http) or "unmanaged".
    # None: "mosquitto-files" when mosquitto_dir is set, else "unmanaged".
    broker_accounts: str | None = None
    # The bearer token brokers send to /api/v1/broker/auth and /acl (EMQX, VerneMQ, HiveMQ, the
    # edgefleet Mosquitto plugin). None: the endpoint is off, except with "mosquitto-http", where
    # it is read from or created in data_dir/broker-auth-token.
    broker_auth_token: str | None = None
    mosquitto_dir: Path | None = None  # where to write Mosquitto's password and ACL files
    mosquitto_pid_file: Path | None = None  # SIGHUP this Mosquitto after rewriting its files
    timestamp_refresh_seconds: float = 3600.0
    timestamp_min_remaining_seconds: float = 12 * 3600.0
    rollout_interval_seconds: float = 5.0  # how often the rollout engine checks bake times and timeouts
    # A device in flight in a rollout that has sent nothing for this long is asked to report again
    # (fleet_server.rollouts.quiet: its outcome's event and report may both have been lost; 0: never).
    report_quiet_seconds: float = 60.0
    telemetry_window_seconds: float = 3600.0  # the window fleet views and alert rules add telemetry over
    # Confidential models: /tuf/targets/ serves enrolled devices only (their API token as Bearer);
    # TUF metadata stays public (docs/security.md).
    private_targets: bool = False
    # Loud failure (issue 13, fleet_server.telemetry.liveness): /healthz says "degraded" when devices
    # are enrolled and none has sent anything for this long (0: never), or when the server's own
    # probe, published every probe_interval_seconds (0: never), has not come back through its
    # subscription within probe_deadline_seconds.
    ingest_silence_seconds: float = 900.0
    probe_interval_seconds: float = 5.0
    probe_deadline_seconds: float = 15.0
    alerts: AlertConfig = field(default_factory=AlertConfig)  # the [alerts] table (docs/telemetry.md)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range", fix="use 1-65535")
        if self.max_upload_bytes <= 0:
            raise ConfigError("max_upload_bytes must be positive", fix="e.g. 536870912 for 512 MiB")
        if not 60 <= self.enrollment_ttl_seconds <= MAX_ENROLLMENT_TTL:
            raise ConfigError(f"enrollment_ttl_seconds {self.enrollment_ttl_seconds} is out of range",
                              fix=f"use 60 to {MAX_ENROLLMENT_TTL} seconds")
        if min(self.timestamp_refresh_seconds, self.timestamp_min_remaining_seconds, self.rollout_interval_seconds,
               self.telemetry_window_seconds) <= 0:
            raise ConfigError("timestamp_refresh_seconds, timestamp_min_remaining_seconds, rollout_interval_seconds "
                              "and telemetry_window_seconds must be positive")
        if self.report_quiet_seconds < 0:
            raise ConfigError(f"report_quiet_seconds {self.report_quiet_seconds} is negative",
                              fix="use 0 (never ask quiet devices to report) or e.g. 60")
        if min(self.ingest_silence_seconds, self.probe_interval_seconds) < 0 or self.probe_deadline_seconds <= 0:
            raise ConfigError("ingest_silence_seconds and probe_interval_seconds must be 0 (off) or positive, "
                              "probe_deadline_seconds positive", fix="e.g. 900, 5 and 15 (the defaults)")
        if self.viewer_token is not None and len(self.viewer_token) < 16:
            raise ConfigError("viewer_token is shorter than 16 characters",
                              fix="use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'")
        if self.viewer_token is not None and self.viewer_token == self.admin_token:
            raise ConfigError("viewer_token equals admin_token: the viewer would be an admin",
                              fix="give the viewer a token of its own")
        if self.replica_id is not None:
            check_replica_id(self.replica_id)
        if self.nats_url is not None:
            from fleet_server.broker.nats_ingest import parse_servers
            from fleet_server.errors import BrokerError

            try:
                parse_servers(self.nats_url)
            except BrokerError as exc:
                raise ConfigError(f"nats_url: {exc.message}", fix=exc.fix) from exc
            if self.broker_url is None:
                raise ConfigError("nats_url is set but broker_url is not: the server publishes assignments over "
                                  "MQTT to a node", fix="set broker_url to a node's MQTT port, e.g. mqtt://HOST:1883")
        if (self.nats_callout_user is None) != (self.nats_callout_password is None):
            raise ConfigError("nats_callout_user and nats_callout_password go together",
                              fix="set both (the login in the nodes' auth_callout auth_users), or neither")
        if (self.nats_system_user is None) != (self.nats_system_password is None):
            raise ConfigError("nats_system_user and nats_system_password go together",
                              fix="set both (a user of the nodes' SYS account, listed in auth_users), or neither")
        if self.nats_callout_user is not None and self.nats_url is None:
            raise ConfigError("nats_callout_user is set but nats_url is not", fix="set nats_url to the cluster's nodes")
        if not 1 <= self.nats_stream_replicas <= 5:
            raise ConfigError(f"nats_stream_replicas {self.nats_stream_replicas} is out of range",
                              fix="use 1 to 5: 3 on a three-node cluster")
        for name in ("broker_url", "broker_public_url"):
            value = getattr(self, name)
            if value is not None:
                check_broker_url(value, name)
        if self.broker_accounts is not None and self.broker_accounts not in BROKER_ACCOUNTS:
            raise ConfigError(f"broker_accounts {self.broker_accounts!r} is not known",
                              fix=f"use one of: {', '.join(BROKER_ACCOUNTS)}")
        if self.accounts == "mosquitto-files" and self.mosquitto_dir is None:
            raise ConfigError("broker_accounts = \"mosquitto-files\" needs mosquitto_dir",
                              fix="set mosquitto_dir to the directory Mosquitto's password_file and acl_file are in")
        if self.accounts == "mosquitto-dynsec" and self.broker_url is None:
            raise ConfigError("broker_accounts = \"mosquitto-dynsec\" needs broker_url (an external Mosquitto)",
                              fix="set broker_url, e.g. mqtt://127.0.0.1:1883")
        if self.accounts == "mosquitto-http" and self.broker_url is None:
            raise ConfigError("broker_accounts = \"mosquitto-http\" needs broker_url (a Mosquitto with the edgefleet "
                              "plugin: the server revokes through it)", fix="set broker_url, e.g. mqtt://127.0.0.1:1883")
        if self.broker_auth_token is not None and len(self.broker_auth_token) < 16:
            raise ConfigError("broker_auth_token is shorter than 16 characters",
                              fix="use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if self.broker_auth_token is not None and self.broker_auth_token in (self.admin_token, self.viewer_token):
            raise ConfigError("broker_auth_token equals the admin or viewer token",
                              fix="give the brokers a token of their own")
        if self.public_url is not None and urlsplit(self.public_url).scheme not in ("http", "https"):
            raise ConfigError(f"public_url {self.public_url!r} is not an http(s) URL",
                              fix="e.g. http://fleet.example.com:8080")

    @property
    def accounts(self) -> str:
        """The broker accounts backend in effect (``broker_accounts`` or what its default means)."""
        if self.broker_accounts is not None:
            return self.broker_accounts
        return "mosquitto-files" if self.mosquitto_dir is not None else "unmanaged"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'edgefleet.sqlite'}"

    @property
    def server_url(self) -> str:
        """The base URL devices are told to use."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def root_keys_dir(self) -> Path:
        return self.data_dir / "offline-root-keys"

    @property
    def tuf_dir(self) -> Path:
        return self.data_dir / "tuf"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    @property
    def mqtt_credentials_file(self) -> Path:
        return self.data_dir / "server-mqtt.json"

    @property
    def broker_auth_token_file(self) -> Path:
        return self.data_dir / "broker-auth-token"

    @property
    def nats_issuer_file(self) -> Path:
        """The NATS auth callout's signing key (its public nkey beside it, ``.pub``, for the nodes' config)."""
        return self.data_dir / "nats-issuer.key"


def check_broker_url(url: str, name: str = "broker_url") -> str:
    """``url``, one broker or several separated by commas (``mqtt://a:1883,b:1883``: failover, in order)."""
    try:
        parse_broker_urls(url)
    except BrokerUrlError as exc:
        raise ConfigError(f"{name}: {exc.message}", fix=exc.fix) from exc
    return url


# [alerts] is a table of its own, read by fleet_server.telemetry.alerts; never a flag or variable.
_FIELDS = {f.name: f for f in fields(ServerConfig) if f.name != "alerts"}
_PATH_FIELDS = {"data_dir", "mosquitto_dir", "mosquitto_pid_file", "broker_ca_file"}
_INT_FIELDS = {"port", "max_upload_bytes", "enrollment_ttl_seconds", "nats_stream_replicas"}
_FLOAT_FIELDS = {"timestamp_refresh_seconds", "timestamp_min_remaining_seconds", "rollout_interval_seconds",
                 "telemetry_window_seconds", "ingest_silence_seconds", "probe_interval_seconds",
                 "probe_deadline_seconds", "report_quiet_seconds"}
_BOOL_FIELDS = {"private_targets"}
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
ENV_PREFIX = "EDGEFLEET_"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _coerce(name: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    try:
        if name in _PATH_FIELDS:
            return Path(str(value)).expanduser()
        if name in _INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if name in _BOOL_FIELDS:
            # A TOML boolean, or a word from an environment variable (EDGEFLEET_PRIVATE_TARGETS=true).
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            raise ConfigError(f"{source}: {name} = {value!r} is not a boolean", fix="use true or false")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {'number' if name not in _PATH_FIELDS else 'path'}",
                          fix="check the value") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string, got {type(value).__name__}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist", fix="check --config / $EDGEFLEET_CONFIG") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = document.get("server", document)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [server] must be a table")
    unknown = sorted(set(section) - set(_FIELDS) - {"server", "alerts"})
    if unknown:
        raise ConfigError(f"config file {path} has unknown key(s): {', '.join(unknown)}",
                          fix=f"known keys: {', '.join(sorted(_FIELDS))}")
    values: dict[str, Any] = {k: _coerce(k, v, f"config file {path}") for k, v in section.items() if k in _FIELDS}
    if "alerts" in document:
        values["alerts"] = load_alert_config(document)
    return values


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> ServerConfig:
    """Build the configuration. ``flags`` holds only the options given on the command line (None = unset)."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown_flags = sorted(set(flags) - set(_FIELDS))
    if unknown_flags:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown_flags)}")
    path = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    values: dict[str, Any] = read_config_file(path) if path else {}
    for name in _FIELDS:
        raw = env.get(env_name(name))
        if raw not in (None, ""):
            values[name] = _coerce(name, raw, f"${env_name(name)}")
    values.update({k: _coerce(k, v, f"--{k.replace('_', '-')}") for k, v in flags.items()})
    data_dir = Path(values.get("data_dir", ServerConfig.data_dir)).expanduser().resolve()
    values["data_dir"] = data_dir
    for name in ("mosquitto_dir", "mosquitto_pid_file", "broker_ca_file"):
        if values.get(name) is not None:
            values[name] = Path(values[name]).resolve()
    return ServerConfig(**values)
