"""Real fleet processes for the demo, ``edgefleet simulate``, the benchmarks and the tests.

This is the one process harness of the tree; tests and bench/ build on it rather than
spawning and killing processes of their own, and ``wait_until`` is the one way to poll.

``Supervisor`` starts every child in its own process group (its own session), logs each to a
file, and stops them all, children of children included, on ``stop_all()``, at interpreter
exit (atexit) and on SIGTERM/SIGINT once ``handle_signals()`` is called. On top of it:

- ``MosquittoProcess``: a Mosquitto with its config in a directory of ours, anonymous clients
  refused (unless ``auth=False``), the password and ACL files the fleet server writes, a pid
  file the server SIGHUPs, and persistence (unless ``persistence=False``) so retained
  assignments and sessions survive a broker restart;
- ``ServerProcess``: ``edgefleet server`` on a free port, waited on until it is healthy;
- ``AgentProcess``: ``edgefleet agent enroll`` then ``edgefleet agent run`` on its own state dir.

It deliberately knows nothing of rollouts or models: the demo and the simulator drive those
through the server's REST API, as a user would.

    EdgefleetError
    └── FleetError      a process would not start, exited early, or a wait ran out
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from edgefleet.errors import EdgefleetError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class FleetError(EdgefleetError):
    """A fleet process would not start, exited early, or a wait for it ran out of time."""


_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port that nothing listens on now and that this process has not handed out yet.

    The kernel may give a port it just gave back to the next ``bind(0)``; a demo that picks the
    ports for a broker, a server and a dozen agents before any of them binds would then start
    two on one port, and one would die. Remembering what was handed out rules that out.
    """
    slot, slots = _port_slot()
    with _ports_lock:
        while True:
            port = _bindable(0) if slots == 1 else _bindable(_SHARED_LOW + slots * random.randrange(
                (_SHARED_HIGH - _SHARED_LOW) // slots) + slot)
            if port and port not in _handed_out:
                _handed_out.add(port)
                return port


# Below Linux's default ephemeral range (32768-60999), so no client socket is given one of them.
_SHARED_LOW, _SHARED_HIGH = 20000, 32768


def _bindable(port: int) -> int:
    """``port`` (or the kernel's pick for 0) if it can be bound on loopback now, else 0."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return int(s.getsockname()[1])


def _port_slot() -> tuple[int, int]:
    """(slot, slots) from EDGEFLEET_PORT_SLOT="SLOT/SLOTS", else (0, 1).

    Parallel test workers are separate processes, so the memory above cannot stop two of them
    handing out one port; each worker takes only ports with ``port % SLOTS == SLOT`` instead,
    picked from 20000-32767. (Not by filtering ``bind(0)``: Linux gives bind() ports of one
    parity only, so a worker waiting for the other parity would wait forever.)
    """
    raw = os.environ.get("EDGEFLEET_PORT_SLOT", "")
    slot, _, slots = raw.partition("/")
    try:
        parsed = int(slot), int(slots)
    except ValueError:
        return 0, 1
    return parsed if 0 <= parsed[0] < parsed[1] else (0, 1)


def mosquitto_binary() -> str | None:
    """The mosquitto binary on PATH or in the usual sbin directories (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1, *,
               explain: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; FleetError naming ``what`` after ``timeout``.

    ``explain`` adds what to look at (e.g. the tail of a process's log) to the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise FleetError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(every)


def edgefleet_argv(*args: str) -> list[str]:
    """``edgefleet ARGS`` run by this interpreter, so children use the same environment."""
    return [sys.executable, "-m", "edgefleet.cli", *args]


def edgefleet_run(*args: str, env: Mapping[str, str] | None = None,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``edgefleet ARGS`` to the end, as a user types it; its exit status is the caller's to judge."""
    return subprocess.run(edgefleet_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)


class Child:
    """One started process: its Popen, its log file and its process group."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the child (and its earlier runs under the same name) wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (it is the group leader)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL it if it has not exited after ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Grandchildren that outlived their parent still belong to the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Supervisor:
    """Starts children in their own process groups and makes sure none outlives us."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._children: list[Child] = []
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            # start_new_session: the child leads its own group, so a Ctrl-C on our terminal
            # reaches only us and we stop the children in order, and killpg reaches grandchildren.
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd or REPO, env={**os.environ, **(env or {})}, start_new_session=True)
        child = Child(name, proc, log_path)
        with self._lock:
            self._children.append(child)
        return child

    @property
    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children)

    def stop_all(self) -> None:
        """Stop every child, newest first (agents before the server before the broker)."""
        with self._lock:
            children, self._children = list(reversed(self._children)), []
        for child in children:
            child.signal(signal.SIGTERM)
        for child in children:
            child.stop(timeout=10.0)

    def handle_signals(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt, so one ``finally`` stops everything on either signal."""
        def interrupt(_signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)


class _Supervised:
    """A process this module started and may kill or stop (and start again)."""

    child: Child | None = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.child is not None:
            self.child.kill()
            self.child = None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


class MosquittoProcess(_Supervised):
    """A Mosquitto with its config, password and ACL files and pid file in a directory of ours.

    ``auth`` (the default, as the fleet runs it) refuses anonymous clients and enforces the
    ``passwd`` and ``acl`` files, which the fleet server writes and SIGHUPs the broker to re-read
    (``reload()`` does the same by hand); ``auth=False`` takes anyone, for tests of one client
    against the broker. ``persistence`` keeps retained messages and queued QoS 1 messages of
    persistent sessions across a restart. Without a ``supervisor`` it makes its own, logging to
    ``directory``.
    """

    def __init__(self, supervisor: Supervisor | None, directory: Path, *, port: int | None = None,
                 extra_hosts: Sequence[str] = (), auth: bool = True, persistence: bool = True) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FleetError("mosquitto is not installed", fix="apt-get install mosquitto, or use --broker embedded")
        self.binary = binary
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.supervisor = supervisor if supervisor is not None else Supervisor(self.directory)
        self.port = port or free_port()
        self.pid_file = self.directory / "mosquitto.pid"
        self.password_file = self.directory / "passwd"
        self.acl_file = self.directory / "acl"
        self.config_file = self.directory / "mosquitto.conf"
        # Addresses besides loopback to listen on (e.g. a veth link to a device's network namespace).
        self.extra_hosts = tuple(extra_hosts)
        self.auth = auth
        self.persistence = persistence
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running broker's process (None while stopped)."""
        return self.child.proc if self.child is not None else None

    def _private_auth_files(self) -> None:
        # Mosquitto 2 refuses world-readable password files in some builds; keep them private.
        for path in (self.password_file, self.acl_file):
            if path.exists():
                path.chmod(0o600)

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(f"listener {self.port} {host}" for host in self.extra_hosts),
            f"pid_file {self.pid_file}",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type subscribe",
        ]
        if self.auth:
            for path in (self.password_file, self.acl_file):
                if not path.exists():
                    path.write_text("")
            self._private_auth_files()
            lines += ["allow_anonymous false", f"password_file {self.password_file}", f"acl_file {self.acl_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            # Persistence keeps retained assignments and queued QoS 1 messages across a restart.
            lines += ["persistence true", f"persistence_location {self.directory}/"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the 'mosquitto' user, who cannot read our 0600 files.
            lines.append("user root")
        self.config_file.write_text("\n".join(lines) + "\n")
        return self.config_file

    def start(self) -> Self:
        config = self._write_config()
        self.child = self.supervisor.spawn("mosquitto", [self.binary, "-c", str(config)])

        def listening() -> bool:
            if self.child is not None and not self.child.alive():
                raise FleetError(f"mosquitto exited at start:\n{self.child.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, 10, f"mosquitto to listen on port {self.port}", every=0.02)
        return self

    def reload(self) -> None:
        """Make Mosquitto re-read its password and ACL files (SIGHUP), as the fleet server does.

        Mosquitto handles the signal in its own time: a caller polls for what the new files
        allow or refuse, never sleeps on a guess."""
        self._private_auth_files()
        if self.child is not None:
            self.child.signal(signal.SIGHUP)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` (an outage the clients must notice), start on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(_Supervised):
    """``edgefleet server`` with its data dir, on a free port, waited on until healthy."""

    def __init__(self, supervisor: Supervisor, data_dir: Path, *, broker: MosquittoProcess | None = None,
                 database_url: str | None = None, port: int | None = None,
                 env: Mapping[str, str] | None = None, config: Path | None = None) -> None:
        self.supervisor = supervisor
        self.config = config
        self.data_dir = Path(data_dir)
        self.broker = broker
        self.database_url = database_url
        self.port = port or free_port()
        self.env = {"EDGEFLEET_ROLLOUT_INTERVAL_SECONDS": "1", **(env or {})}
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = ["server", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if self.database_url:
            args += ["--database", self.database_url]
        if self.config is not None:
            args += ["--config", str(self.config)]
        if self.broker is not None:
            args += ["--broker", self.broker.url, "--mosquitto-dir", str(self.broker.directory),
                     "--mosquitto-pid-file", str(self.broker.pid_file)]
        return edgefleet_argv(*args)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.child = self.supervisor.spawn("server", self.argv(), env=self.env)
        child = self.child
        wait_until(self._healthy, timeout, f"the fleet server on {self.url} to be healthy", every=0.1,
                   explain=lambda: child.log_tail(60))
        return self

    def _healthy(self) -> bool:
        import httpx

        if self.child is not None and not self.child.alive():
            raise FleetError(f"the fleet server exited:\n{self.child.log_tail()}")
        try:
            health = httpx.get(f"{self.url}/healthz", timeout=2)
        except httpx.TransportError:
            return False
        return health.status_code == 200 and bool(health.json().get("mqtt_connected"))

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()


# A newly activated model is watched for 60 s (20 requests) by default; demos and tests that
# roll out several versions in a minute shorten that through the agent's own agent.toml.
DEFAULT_PROBATION_S = 3.0


def agent_toml(settings: Mapping[str, float | int | bool | str]) -> str:
    """agent.toml text for flat ``key = value`` settings (docs/agent.md lists the keys)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in sorted(settings.items()))


class AgentProcess(_Supervised):
    """One real device: enrolled with a one-time token, then ``edgefleet agent run``."""

    def __init__(self, supervisor: Supervisor, name: str, state_dir: Path, *,
                 probation_s: float = DEFAULT_PROBATION_S, probation_min_requests: int = 5,
                 settings: Mapping[str, float | int | bool | str] | None = None,
                 env: Mapping[str, str] | None = None, wrapper: Sequence[str] = (), verbose: bool = False) -> None:
        self.supervisor = supervisor
        self.name = name
        self.state_dir = Path(state_dir)
        self.port = free_port()
        # Written next to the state dir and passed with --config; settings override the probation.
        self.settings = {"probation_s": probation_s, "probation_min_requests": probation_min_requests,
                         "unix_socket": False, **(settings or {})}
        self.config_file = self.state_dir.parent / f"{name}.toml"
        self.env = dict(env or {})
        # wrapper: argv put in front of the agent's, e.g. `ip netns exec NS`.
        self.wrapper = list(wrapper)
        self.verbose = verbose  # -v: the agent logs each update step, which some tests read
        self.device_id = ""
        self.profile = ""
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enroll(self, server_url: str, token: str, timeout: float = 60.0) -> AgentProcess:
        """Run ``edgefleet agent enroll`` as a user would; remember the device id it got."""
        try:
            done = edgefleet_run("agent", "enroll", "--server", server_url, f"--token={token}", "--state-dir",
                                 str(self.state_dir), "--hostname", self.name, "--json", env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FleetError(f"{self.name}: agent enroll took over {timeout:.0f} s") from exc
        if done.returncode != 0:
            raise FleetError(f"{self.name}: agent enroll failed: {done.stderr.strip() or done.stdout.strip()}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        self.device_id = str(result["device_id"])
        self.profile = str(result["profile"])
        return self

    def argv(self) -> list[str]:
        verbose = ["-v"] if self.verbose else []
        return [*self.wrapper, *edgefleet_argv(*verbose, "agent", "run", "--state-dir", str(self.state_dir),
                                               "--http-port", str(self.port), "--config", str(self.config_file))]

    def start(self) -> AgentProcess:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(agent_toml(self.settings))
        self.child = self.supervisor.spawn(self.name, self.argv(), env=self.env)
        return self

    def wait_ready(self, timeout: float = 60.0, every: float = 0.2) -> AgentProcess:
        child = self.child
        wait_until(self.healthz, timeout, f"{self.name}'s local API on {self.url}", every=every,
                   explain=lambda: child.log_tail(60) if child is not None else "")
        return self

    def healthz(self) -> dict[str, Any] | None:
        import httpx

        if self.child is None or not self.child.alive():
            tail = self.child.log_tail() if self.child else ""
            raise FleetError(f"{self.name} is not running:\n{tail}")
        try:
            answer = httpx.get(f"{self.url}/healthz", timeout=2)
        except httpx.TransportError:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None
