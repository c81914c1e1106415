"""Everything a running server holds, built from a ``ServerConfig``: the one place that wires it.

``ServerContext.open`` does the synchronous first-start work, in order: the data directory,
the database (Alembic ``upgrade head``), the signing keys (``init_keys`` with the root keys in
``data_dir/offline-root-keys`` and a loud warning, if there are none), the TUF repository
(created on first start), the admin token (created once, stored 0600, reported as new so the
CLI prints it once) and the server's own MQTT credentials. ``start_network`` then starts the
embedded broker when no broker URL is configured, writes the broker accounts, connects the
MQTT ingest and starts the rollout engine's worker (``fleet_server.rollouts.engine``), which
publishes signed assignments over the same connection, the telemetry ingest
(``fleet_server.telemetry.ingest``) and the alert loop (``fleet_server.telemetry.monitor``); ``close`` undoes it.
The fleet views, the server-side predictor and the /metrics registry are built in ``open``.

Services (``Registry``, ``Devices``) receive their collaborators here; none of them reads the
config or the environment themselves.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from edgefleet.atomic import atomic_write_bytes, atomic_write_json
from fleet_server.broker.accounts import BrokerAccounts, BrokerUser, UnmanagedBroker
from fleet_server.config import ServerConfig
from fleet_server.credentials import new_secret
from fleet_server.db import Database, safe_url
from fleet_server.errors import ConfigError
from fleet_server.registry.devices import Devices
from fleet_server.registry.models import Registry

if TYPE_CHECKING:  # the network side is imported when it starts, so ``open`` stays light
    from fleet_server.broker.access import Grant, Login
    from fleet_server.broker.auth_api import BrokerAuth
    from fleet_server.broker.connection import FleetMqtt
    from fleet_server.broker.embedded import EmbeddedBroker
    from fleet_server.broker.nats_auth import AuthCallout
    from fleet_server.broker.nats_ingest import JetStreamIngest
    from fleet_server.registry.presence import PresenceIngest
    from fleet_server.rollouts.engine import RolloutEngine, RolloutWorker
    from fleet_server.rollouts.resend import DesiredResender
    from fleet_server.telemetry.ingest import TelemetryIngest
    from fleet_server.telemetry.liveness import LivenessMonitor

log = logging.getLogger(__name__)

SECRET_MODE = 0o600


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Secret:
    value: str
    created: bool  # True the first time: the caller shows it once


class Fanout:
    """One MQTT handler that calls several in order (presence first, then the rollout worker)."""

    def __init__(self, handlers: list[Callable[[str, bytes], None]]) -> None:
        self.handlers = handlers

    def __call__(self, topic: str, payload: bytes) -> None:
        for handler in list(self.handlers):
            try:
                handler(topic, payload)
            except Exception:  # one consumer's bug must not starve the others
                log.exception("MQTT handler %r failed on %s", handler, topic)


def read_or_create_secret(path: Path, make: Callable[[], str] = new_secret) -> Secret:
    if path.exists():
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return Secret(value, False)
    value = make()
    atomic_write_bytes(path, (value + "\n").encode(), mode=SECRET_MODE)
    return Secret(value, True)


class ServerContext:
    def __init__(self, config: ServerConfig, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.config = config
        self.clock = clock
        self.keys_created = False
        self.key_warnings: tuple[str, ...] = ()
        self.repo_created = False
        # The network side: None until ``start_network`` and again after ``close``.
        self.embedded_broker: EmbeddedBroker | None = None
        self.mqtt: FleetMqtt | None = None
        self.rollouts: RolloutEngine | None = None
        self.rollout_worker: RolloutWorker | None = None
        self.resender: DesiredResender | None = None
        self.ingest: TelemetryIngest | None = None
        self.presence: PresenceIngest | None = None
        self.jetstream: JetStreamIngest | None = None  # the NATS backend's consumer (config.nats_url)
        self.nats_auth: AuthCallout | None = None  # per-device permissions on NATS (config.nats_callout_user)
        self.liveness: LivenessMonitor | None = None
        self.broker_url: str | None = config.broker_url
        self.broker_auth_token_created = False  # the CLI says where it is, the first time
        self._opened = False

    @classmethod
    def open(cls, config: ServerConfig, *, clock: Callable[[], datetime] = _utcnow) -> ServerContext:
        ctx = cls(config, clock=clock)
        ctx._open()
        return ctx

    def _open(self) -> None:
        from fleet_server.registry.artifacts import LocalArtifactStore
        from fleet_server.trust.keys import KeyStore, init_keys
        from fleet_server.trust.tuf_repo import TufRepository

        config = self.config
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create the data directory {config.data_dir}: {exc.strerror}",
                              fix="pass --data-dir to a writable directory") from exc
        self.db = Database(config.database)
        self.db.migrate()
        if not (config.keys_dir / "director.pem").exists():
            # init_keys logs the warning to move the root keys offline; the CLI repeats it loudly.
            self.key_warnings = init_keys(config.keys_dir, config.root_keys_dir).warnings
            self.keys_created = True
        self.keys = KeyStore.load(config.keys_dir)
        if (config.tuf_dir / "metadata" / "timestamp.json").exists():
            self.repo = TufRepository(config.tuf_dir, self.keys, self.clock)
        else:
            self.repo = TufRepository.create(config.tuf_dir, self.keys, config.root_keys_dir, clock=self.clock)
            self.repo_created = True
        self.artifacts = LocalArtifactStore(config.artifacts_dir)
        if config.admin_token:
            self.admin_token = Secret(config.admin_token, False)
        else:
            self.admin_token = read_or_create_secret(config.admin_token_file)
        self.mqtt_password = config.mqtt_password or self._server_mqtt_password()
        if config.nats_callout_user is not None:
            from fleet_server.broker.nats_auth import Issuer

            # At the first start (--init-only too): the nodes' config needs its public key first.
            Issuer.load_or_create(config.nats_issuer_file)
        self.registry = Registry(self.db, self.repo, self.artifacts, clock=self.clock,
                                 max_bundle_bytes=config.max_upload_bytes)
        from fleet_server.broker.auth import verify_mosquitto_password
        from fleet_server.broker.logins import LoginChecker

        # Brokers that ask at each CONNECT (NATS callout, the HTTP endpoint) check logins through it.
        self.logins = LoginChecker(lambda username: self.devices.broker_account(username), verify_mosquitto_password)
        self.broker_auth = self._broker_auth()
        self.devices = Devices(self.db, self._broker_accounts(), server_user=self._server_user(), clock=self.clock,
                               max_token_ttl=timedelta(days=30))
        self._open_monitoring()
        self._opened = True

    def _open_monitoring(self) -> None:
        from fleet_server.registry.bundle_cache import BundleCache
        from fleet_server.registry.predict import Predictor
        from fleet_server.telemetry.metrics import Metrics
        from fleet_server.telemetry.monitor import AlertMonitor
        from fleet_server.telemetry.refusals import DeviceRefusals
        from fleet_server.telemetry.views import FleetViews

        bundles = BundleCache(self.db, self.artifacts)
        self.fleet_views = FleetViews(self.db, bundles, window_s=self.config.telemetry_window_seconds)
        self.predictor = Predictor(bundles)
        self.monitor = AlertMonitor(self.db, self.fleet_views, self.config.alerts)
        self.metrics = Metrics(self.fleet_views, lambda: self.ingest.counts() if self.ingest is not None else None,
                               self.monitor.episodes, liveness=self.ingest_problems)
        from prometheus_client import Counter as PromCounter

        from fleet_server.rollouts.resend import ResendCollector

        self.metrics.registry.register(ResendCollector(lambda: self.resender.counts() if self.resender else None))
        # Made once with the registry: the MQTT side (and the rollout worker) may start more than once.
        self.report_requests = PromCounter(
            "edgefleet_rollout_report_requests",
            "report commands sent to devices in flight that went quiet (fleet_server.rollouts.quiet)",
            registry=self.metrics.registry)
        self.refusals = DeviceRefusals(self.db)

    def ingest_problems(self) -> list[dict[str, str]] | None:
        """Why this replica receives nothing (``fleet_server.telemetry.liveness``); None without MQTT."""
        return None if self.liveness is None else [p.to_dict() for p in self.liveness.problems()]

    def _server_mqtt_password(self) -> str:
        path = self.config.mqtt_credentials_file
        if path.exists():
            return str(json.loads(path.read_text())["password"])
        password = new_secret()
        atomic_write_json(path, {"username": self.config.mqtt_username, "password": password}, mode=SECRET_MODE)
        return password

    def _server_user(self) -> BrokerUser | None:
        if self.config.accounts != "mosquitto-files":
            return None  # dynamic security: the server's own client is made by the bootstrap recipe
        from fleet_server.broker.auth import mosquitto_password_hash

        return BrokerUser(self.config.mqtt_username, mosquitto_password_hash(self.mqtt_password), None)

    def _broker_auth(self) -> BrokerAuth | None:
        """The HTTP broker-auth endpoint's service (fleet_server.broker.auth_api), when it is on."""
        config = self.config
        if config.broker_auth_token is None and config.accounts != "mosquitto-http":
            return None
        from fleet_server.broker.auth_api import BrokerAuth

        if config.broker_auth_token is not None:
            token = config.broker_auth_token
        else:
            secret = read_or_create_secret(config.broker_auth_token_file)
            token, self.broker_auth_token_created = secret.value, secret.created
        return BrokerAuth(token, grant_for=self.broker_grant, user_grant=self.user_grant)

    def _broker_accounts(self) -> BrokerAccounts:
        config = self.config
        if config.accounts in ("mosquitto-http", "mosquitto-dynsec"):
            from edgefleet.brokers import parse_broker_urls
            from fleet_server.broker.dynsec import DynsecAccounts
            from fleet_server.broker.mosquitto_http import MosquittoHttpAccounts

            assert config.broker_url is not None  # ServerConfig checks it
            # Both talk to a plugin's $CONTROL topic as the server: the login in the URL, else its own.
            login = urlsplit(config.broker_url.split(",")[0])
            addresses = parse_broker_urls(config.broker_url)
            username = unquote(login.username) if login.username else config.mqtt_username
            password = unquote(login.password) if login.password else self.mqtt_password
            ca_file = str(config.broker_ca_file) if config.broker_ca_file else None
            if config.accounts == "mosquitto-http":
                return MosquittoHttpAccounts(addresses, username, password, ca_file=ca_file,
                                             on_revoked=self.logins.forget)
            return DynsecAccounts(addresses, username, password, ca_file=ca_file)
        if config.nats_url is not None and config.nats_callout_user is not None:
            from fleet_server.broker.nats_auth import NatsAccounts
            from fleet_server.broker.nats_ingest import parse_servers

            system = (config.nats_system_user, config.nats_system_password or "") if config.nats_system_user else None
            return NatsAccounts(parse_servers(config.nats_url), system)
        if config.accounts == "mosquitto-files" and config.mosquitto_dir is not None:
            from fleet_server.broker.accounts import MosquittoAccounts

            return MosquittoAccounts(config.mosquitto_dir, config.mosquitto_pid_file)
        return UnmanagedBroker()

    @property
    def broker_public_urls(self) -> list[str]:
        """Every broker devices are told of, in the order they try them (failover; docs/contracts.md)."""
        # Never hand devices the server's own login embedded in --broker.
        url = self.config.broker_public_url or self.broker_url
        if url is None:
            return []
        from edgefleet.brokers import parse_broker_urls

        return [address.url for address in parse_broker_urls(url)]  # host and port only, never a login

    @property
    def broker_public_url(self) -> str | None:
        """The first of ``broker_public_urls`` (what agents before the list read)."""
        urls = self.broker_public_urls
        return urls[0] if urls else None

    def start_network(self, *, wait_connected: float = 10.0) -> None:
        from edgefleet.topics import DEVICE_TO_SERVER
        from fleet_server.broker.connection import FleetMqtt, replica_client_id
        from fleet_server.registry.presence import PresenceIngest
        from fleet_server.telemetry.ingest import TelemetryIngest

        if self.broker_url is None:
            from fleet_server.broker.embedded import EmbeddedBroker

            self.embedded_broker = EmbeddedBroker().start()
            self.broker_url = self.embedded_broker.url
            log.warning("no --broker given: started the embedded MQTT broker (amqtt) at %s; it enforces no "
                        "per-device ACL, use Mosquitto for a real fleet", self.broker_url)
        if self.config.accounts != "unmanaged":
            self.devices.sync_broker()
        from fleet_server.rollouts.assignments import Assignments
        from fleet_server.rollouts.engine import RolloutEngine, RolloutWorker
        from fleet_server.rollouts.quiet import QuietPolicy

        embedded = self.embedded_broker is not None
        # Credentials in the URL (mqtt://user:pass@host) win; the embedded broker needs none.
        own_login = not embedded and urlsplit(self.broker_url).username is None
        from fleet_server.telemetry.acks import TelemetryAcks

        # Stored telemetry is confirmed to each device (telemetry_ack) over the connection that
        # publishes assignments, so on NATS too it goes where `desired` goes.
        acks = TelemetryAcks(lambda: self.mqtt.send if self.mqtt is not None else None)
        self.ingest = TelemetryIngest(self.db, clock=self.clock, references=self.fleet_views.reference,
                                      on_stored=self.metrics.model_counters.add, on_committed=acks).start()
        self.presence = PresenceIngest(self.devices, self.clock, on_dropped=self.ingest.store_failed)
        fanout = Fanout([])
        # The ingest checks every device message first (issue 14) and stores telemetry and events;
        # the reported and events messages it accepts go on to presence and the rollout worker.
        # Manual acks (issue 13): a message is acked once stored, so a crash loses none.
        handler = self.ingest.handler(fanout, presence=self.presence)
        # On a NATS cluster the device messages come from JetStream (_start_jetstream); MQTT only publishes.
        nats = self.config.nats_url is not None
        if nats and self.config.nats_callout_user is not None:
            self._start_nats_auth()
        self.mqtt = FleetMqtt(self.broker_url, handler=handler,
                              kinds=() if nats else DEVICE_TO_SERVER, manual_ack=True,
                              username=self.config.mqtt_username if own_login else None,
                              password=self.mqtt_password if own_login else None,
                              shared=not embedded,
                              ca_file=str(self.config.broker_ca_file) if self.config.broker_ca_file else None,
                              # a session that outlives a restart (issue 19); the embedded broker dies with us
                              client_id=None if embedded else replica_client_id(self.config.replica_id,
                                                                                self.config.port),
                              persistent=not embedded and not nats).start()
        if nats:
            self._start_jetstream(handler)
        # The rollout engine publishes assignments over the same connection; its worker gets
        # every device message too (presence is queued for its own batched writer).
        self.rollouts = RolloutEngine(self.db, Assignments(self.db, self.keys.director, self.mqtt), clock=self.clock,
                                      reports=None if embedded else self.mqtt)
        quiet_s = self.config.report_quiet_seconds
        # Devices in flight that went quiet are asked to report (QoS 0, where `desired` goes).
        self.rollout_worker = RolloutWorker(
            self.rollouts, self.config.rollout_interval_seconds,
            send=(lambda: self.mqtt.send if self.mqtt is not None else None) if quiet_s > 0 else None,
            quiet=QuietPolicy(quiet_s, max(600.0, quiet_s)) if quiet_s > 0 else None,
            on_asked=self.report_requests.inc).start()
        fanout.handlers.append(self.rollout_worker.submit)
        from fleet_server.rollouts.resend import DesiredResender

        # A device that reports an older assignment than the latest issued missed its `desired`
        # (published while its SUBSCRIBE waited): publish it again, rate-limited per device.
        self.resender = DesiredResender(self.rollouts.assignments).start()
        fanout.handlers.append(self.resender.submit)
        self.monitor.start()
        self._start_liveness()
        if self.config.accounts == "mosquitto-http":
            # The broker asks this server's own endpoint about our login, and it serves only once
            # start-up is over: waiting here would always time out (a replica already up answers).
            log.info("MQTT connects once this server answers the broker's auth call (mosquitto-http)")
        elif not self.mqtt.wait_connected(wait_connected):
            log.warning("MQTT broker %s not reachable yet; the server keeps retrying", self.broker_url)

    def _start_liveness(self) -> None:
        from fleet_server.telemetry.liveness import LivenessConfig, LivenessMonitor, probe_topic

        mqtt, ingest = self.mqtt, self.ingest
        assert mqtt is not None and ingest is not None
        c = self.config
        self.liveness = LivenessMonitor(
            LivenessConfig(c.ingest_silence_seconds, c.probe_interval_seconds, c.probe_deadline_seconds),
            probe_topic=probe_topic(mqtt.client_id),
            publish=lambda topic, payload: mqtt.publish(topic, payload, timeout=min(10.0, c.probe_deadline_seconds)),
            connected=mqtt.connected.is_set,
            last_delivery=lambda: (self.jetstream or mqtt).last_delivery,
            last_device_message=lambda: ingest.last_message_at, enrolled=self._enrolled_count,
            saturated=ingest.saturated).start()

    def _start_jetstream(self, handler: Callable[..., None]) -> None:
        """The NATS backend (docs/deployment.md "Scaling out"): the shared durable consumer, acked after commit."""
        from fleet_server.broker.nats_ingest import JetStreamIngest, parse_servers

        c = self.config
        assert c.nats_url is not None
        servers = parse_servers(c.nats_url)
        # Through the callout the server logs in as itself (as on MQTT); without it, as the URL says.
        self.jetstream = JetStreamIngest(servers, handler=handler, replicas=c.nats_stream_replicas,
                                         name=f"edgefleet-server-{c.replica_id or c.port}",
                                         user=c.mqtt_username if self.nats_auth else None,
                                         password=self.mqtt_password if self.nats_auth else None).start()

    def _start_nats_auth(self) -> None:
        """Per-device permissions on the cluster (fleet_server.broker.nats_auth): before any of our own
        clients connects, since the nodes ask the callout about those too."""
        from fleet_server.broker.nats_auth import AuthCallout, Issuer
        from fleet_server.broker.nats_ingest import parse_servers

        c = self.config
        assert c.nats_url is not None and c.nats_callout_user is not None and c.nats_callout_password is not None
        self.nats_auth = AuthCallout(parse_servers(c.nats_url), user=c.nats_callout_user,
                                     password=c.nats_callout_password, issuer=Issuer.load_or_create(c.nats_issuer_file),
                                     grant_for=self.broker_grant).start()
        if not self.nats_auth.wait_ready(10):
            log.warning("the NATS auth callout is not serving yet; clients are refused until it is")

    def broker_grant(self, login: Login) -> Grant | None:
        """Who a client connecting to a broker that asks us is (NATS callout, HTTP endpoint): this
        server (any replica, by its own password) or an enrolled device (one registry row)."""
        from fleet_server.broker.access import device_grant, server_grant

        if login.user == self.config.mqtt_username:
            ok = hmac.compare_digest(login.password.encode(), self.mqtt_password.encode())
            return server_grant(login.user) if ok else None
        checked = self.logins.check(login.user, login.password)
        if checked.device_id is None:
            log.debug("broker login %r refused: %s", login.user, checked.why)
            return None
        return device_grant(checked.device_id)

    def user_grant(self, username: str) -> Grant | None:
        """What a connected login may do, by its username alone (the HTTP ACL check)."""
        from fleet_server.broker.access import device_grant, server_grant

        if username == self.config.mqtt_username:
            return server_grant(username)
        account = self.devices.broker_account(username)
        return None if account is None else device_grant(account.device_id)

    def _enrolled_count(self) -> int:
        from sqlalchemy import func, select

        from fleet_server.tables import DeviceRow

        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(DeviceRow)
                                      .where(DeviceRow.status == "enrolled")) or 0)

    def refresh_timestamp(self) -> bool:
        refreshed = self.registry.refresh_timestamp(timedelta(seconds=self.config.timestamp_min_remaining_seconds))
        if refreshed:
            log.info("re-signed TUF timestamp/snapshot before expiry")
        return refreshed

    def describe(self) -> list[tuple[str, str]]:
        """Where everything is, for the start-up log."""
        c = self.config
        return [
            ("data dir", str(c.data_dir)),
            ("database", safe_url(c.database)),
            ("broker", safe_url(self.broker_url) if self.broker_url else "embedded amqtt on loopback (starts with the server)"),
            ("broker for devices", safe_url(self.broker_public_url) if self.broker_public_url else "-"),
            ("API", f"{c.server_url}/api/v1 (OpenAPI at {c.server_url}/docs)"),
            ("TUF", f"{c.server_url}/tuf/metadata/ and {c.server_url}/tuf/targets/"),
            ("admin token file", "(from config)" if c.admin_token else str(c.admin_token_file)),
            ("online keys", str(c.keys_dir)),
            ("root keys", str(c.root_keys_dir)),
            ("broker accounts", c.accounts + (f" in {c.mosquitto_dir}" if c.accounts == "mosquitto-files" else "")),
            ("broker auth endpoint", f"{c.server_url}/api/v1/broker/auth and /acl" if self.broker_auth else "off"),
        ]

    def close(self) -> None:
        if self._opened:
            self.monitor.stop()
        if self.liveness is not None:
            self.liveness.stop()
            self.liveness = None
        if self.resender is not None:
            self.resender.stop()
            self.resender = None
        if self.rollout_worker is not None:
            self.rollout_worker.stop()
            self.rollout_worker = None
            self.rollouts = None
        if self.jetstream is not None:
            self.jetstream.stop()  # acks not sent by now come back to a replica, and are deduplicated
            self.jetstream = None
        if self.nats_auth is not None:
            self.nats_auth.stop()
            self.nats_auth = None
        if self.mqtt is not None:
            self.mqtt.stop()
            self.mqtt = None
        if self.ingest is not None:
            self.ingest.stop()  # after MQTT: what was queued is still written
            self.ingest = None
        if self.presence is not None:
            self.presence.stop()  # drained before the database goes away
            self.presence = None
        close_accounts = getattr(self.devices.broker, "close", None) if self._opened else None
        if close_accounts is not None:
            close_accounts()  # the dynamic-security or edgefleet-plugin control connection
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
            self.embedded_broker = None
            self.broker_url = self.config.broker_url
        if self._opened:
            self.db.dispose()


