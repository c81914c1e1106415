"""``edgefleet simulate``: a fleet, a rollout and injected faults, with a report of what happened.

Devices are real ``edgefleet agent`` processes (``--processes``, for small N) or light
devices (simulation/lightdevice.py: real MQTT, real signatures, real TUF metadata checks, no
runtime) for hundreds to thousands. Each is enrolled through the server's real enrollment
API with a one-time token. Without ``--server`` the simulator starts its own broker and
server (like the demo) and pushes one small model per profile of the mix; that is also what
lets it restart the broker or corrupt a served bundle.

Faults (simulation/faults.py plans them; this module carries them out): network loss for a
share of devices (light devices drop their connection; processes are stopped and started
again), a broker restart (own Mosquitto only), SIGKILL of agents while they update
(processes only), a corrupted bundle on the server (own server, processes only: light
devices download nothing), a slow link (every update step takes longer; light devices only),
clock skew (light devices' clocks; an agent process cannot be given another clock).

The report (simulation/report.py): update latency p50/p95/max, failures by reason, messages
lost and duplicated. It deliberately does not judge the run beyond ``lost == 0``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from simulation.faults import (
    FaultAction,
    FaultError,
    FaultPlan,
    parse_seconds,
    parse_share_duration,
    schedule,
)
from simulation.faults import skewed_devices as pick_skewed

TERMINAL = {"completed", "rolled_back", "halted", "aborted"}


def parse_profile_mix(text: str) -> dict[str, float]:
    """``"rpi4-64=70,jetson-orin-nano=30"`` -> shares that add up to 1."""
    mix: dict[str, float] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        name, sep, weight = term.partition("=")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = -1.0
        if not name or value <= 0:
            raise FaultError(f"--profile-mix term {term!r} is not PROFILE=WEIGHT",
                             fix="e.g. --profile-mix rpi4-64=70,jetson-orin-nano=30")
        mix[name] = mix.get(name, 0.0) + value
    if not mix:
        raise FaultError("--profile-mix is empty", fix="e.g. --profile-mix rpi4-64=70,jetson-orin-nano=30")
    total = sum(mix.values())
    return {name: value / total for name, value in mix.items()}


DEFAULT_PROFILE_MIX = "rpi4-64=70,jetson-orin-nano=30"
MODEL_VERSION = "1.0.0"  # what the simulator converts and rolls out when it runs its own server


def model_targets(mix: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """The (profile, name, format, quantize) the simulator converts the digits MLP for, one per profile."""
    return [(profile, f"sim-{profile}", *(("tflite", "int8") if profile == "rpi-zero-2w" else ("onnx", "none")))
            for profile in mix]


def profiles_for(mix: dict[str, float], n: int) -> list[str]:
    """``n`` profiles in the mix's shares (largest remainder), interleaved rather than in blocks."""
    exact = {p: share * n for p, share in mix.items()}
    counts = {p: int(v) for p, v in exact.items()}
    for p in sorted(exact, key=lambda p: exact[p] - counts[p], reverse=True)[: n - sum(counts.values())]:
        counts[p] += 1
    order: list[str] = []
    while len(order) < n:
        for p in mix:
            if counts[p]:
                order.append(p)
                counts[p] -= 1
    return order


@dataclass(frozen=True)
class SimulateOptions:
    devices: int
    profile_mix: dict[str, float]
    server: str | None = None
    token: str | None = None
    rollouts: tuple[str, ...] = ()
    processes: bool = False
    faults: FaultPlan = field(default_factory=FaultPlan)
    duration_s: float = 120.0
    seed: int = 2026
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise FaultError(f"--devices must be >= 1, got {self.devices}")
        f = self.faults
        own = self.server is None
        if f.broker_restart_at_s is not None and not own:
            raise FaultError("--broker-restart needs the simulator's own broker", fix="leave out --server")
        if f.corrupt_download and not (own and self.processes):
            raise FaultError("--corrupt-download needs real agents and the simulator's own server",
                             fix="use --processes and leave out --server")
        if f.sigkill and not self.processes:
            raise FaultError("--sigkill kills agent processes", fix="add --processes")
        if (f.slow_link_s or f.clock_skew_share) and self.processes:
            raise FaultError("--slow-link and --clock-skew act on light devices only", fix="leave out --processes")
        if not own and not self.rollouts:
            raise FaultError("with --server, name what to roll out", fix="e.g. --rollout digits@1.0.0")


class Simulation:
    """One run: set up (or reach) the server, enroll, roll out, inject faults, report."""

    def __init__(self, options: SimulateOptions, workdir: Path, say: Callable[[str], None]) -> None:
        from simulation.fleet import Supervisor

        self.options = options
        self.workdir = workdir
        self.say = say
        self.supervisor = Supervisor(workdir / "logs")
        self.broker: Any = None
        self.server: Any = None
        self.agents: dict[str, Any] = {}          # device id -> AgentProcess
        self.fleets: list[Any] = []               # LightFleet(s)
        self.light: dict[str, Any] = {}           # device id -> (fleet, LightDevice)
        self.fault_log: list[dict[str, Any]] = []
        self.run_id = uuid.uuid4().hex[:8]
        self._client: Any = None

    def run(self) -> dict[str, Any]:
        try:
            url, token = self._server()
            from fleet_server.cli.client import AdminClient, ClientSettings

            self._client = AdminClient(ClientSettings(url, token))
            targets = list(self.options.rollouts) or self._push_models()
            t0 = time.monotonic()
            self._enroll(url)
            enrolled_s = time.monotonic() - t0
            plan = schedule(self.options.faults, sorted(self.agents or self.light), self.options.seed)
            views, started = self._roll_out(targets, plan)
            return self._report(views, enrolled_s, started)
        finally:
            for fleet in self.fleets:
                with contextlib.suppress(Exception):
                    fleet.stop()
            if self._client is not None:
                self._client.close()
            self.supervisor.stop_all()

    # -- set-up -------------------------------------------------------------------------------

    def _server(self) -> tuple[str, str]:
        from simulation.fleet import MosquittoProcess, ServerProcess, mosquitto_binary

        if self.options.server is not None:
            from fleet_server.cli.client import resolve_client_settings

            settings = resolve_client_settings(self.options.server, self.options.token)
            if not settings.token:
                raise FaultError("no admin token", fix="pass --token or set EDGEFLEET_TOKEN")
            return settings.server, settings.token
        if mosquitto_binary() is not None:
            self.broker = MosquittoProcess(self.supervisor, self.workdir / "mosquitto").start()
        elif self.options.faults.broker_restart_at_s is not None:
            raise FaultError("--broker-restart needs Mosquitto", fix="apt-get install mosquitto")
        self.server = ServerProcess(self.supervisor, self.workdir / "server", broker=self.broker).start()
        self.say(f"server {self.server.url}, broker {'mosquitto' if self.broker else 'embedded'}")
        return self.server.url, self.server.admin_token

    def _push_models(self) -> list[str]:
        from simulation.bundles import DemoModels

        models = DemoModels(self.workdir / "models")  # a --data-dir an earlier run used: its conversions reused
        refs = []
        for target in model_targets(self.options.profile_mix):
            result = models.convert(target, MODEL_VERSION)
            pushed = self._client.push_model(result.bundle_path)
            refs.append(f"{pushed['name']}@{pushed['version']}")
        self.say(f"pushed {', '.join(refs)}")
        return refs

    def _enroll(self, url: str) -> None:
        import httpx

        from simulation.fleet import AgentProcess
        from simulation.lightdevice import Behaviour, DeviceIdentity, LightFleet, TufTargetChecker

        labels = {"sim": self.run_id}
        profiles = profiles_for(self.options.profile_mix, self.options.devices)
        if self.options.processes:
            for i, profile in enumerate(profiles):
                token = self._client.create_enrollment_token(profile, labels, 900)["token"]
                # Nobody predicts through simulated devices: a 1 s probation that needs no requests.
                agent = AgentProcess(self.supervisor, f"sim-{i:04d}", self.workdir / "devices" / f"sim-{i:04d}",
                                     probation_s=1.0, probation_min_requests=0)
                agent.enroll(url, token).start()
                self.agents[agent.device_id] = agent
            for agent in self.agents.values():
                agent.wait_ready()
        else:
            grants = []
            with httpx.Client(base_url=url, timeout=30) as http:
                for i, profile in enumerate(profiles):
                    token = self._client.create_enrollment_token(profile, labels, 900)["token"]
                    answer = http.post("/api/v1/enroll", json={"token": token, "hostname": f"light-{i:05d}",
                                                               "agent_version": "lightdevice"})
                    answer.raise_for_status()
                    grants.append(answer.json())
            first = grants[0]
            root = first["tuf_root"]
            root_bytes = root.encode() if isinstance(root, str) else json.dumps(root).encode()
            (self.workdir / "tuf-client").mkdir(parents=True, exist_ok=True)
            checker = TufTargetChecker(root_bytes, first["tuf_metadata_url"], self.workdir / "tuf-client")
            faults = self.options.faults
            skewed = set(pick_skewed(faults, [g["device_id"] for g in grants], self.options.seed))
            skew = timedelta(seconds=faults.clock_skew_s)
            normal = LightFleet(first["broker_url"], checker=checker)
            late = LightFleet(first["broker_url"], checker=checker, wall_clock=lambda: datetime.now(UTC) + skew)
            behaviour = Behaviour(step_delay=faults.slow_link_s)
            for grant in grants:
                fleet = late if grant["device_id"] in skewed else normal
                identity = DeviceIdentity(grant["device_id"], grant["profile"], grant["director_public_key"],
                                          grant["mqtt_username"], grant["mqtt_password"], labels=grant["labels"])
                self.light[grant["device_id"]] = (fleet, fleet.add(identity, behaviour))
            self.fleets = [f for f in (normal, late) if f.devices]
            for fleet in self.fleets:
                fleet.start()
            for fleet in self.fleets:
                fleet.wait_connected(60)
        n = self.options.devices
        self.say(f"enrolled {n} {'agent processes' if self.options.processes else 'light devices'}")

    # -- the rollout and the faults -----------------------------------------------------------

    def _roll_out(self, targets: list[str], plan: list[FaultAction]) -> tuple[list[dict[str, Any]], float]:
        created = []
        for ref in targets:
            model, _, version = ref.partition("@")
            body = {"model": model, "version": version, "selector": f"sim={self.run_id}", "waves": [10.0, 50.0, 100.0],
                    "bake_seconds": 1.0, "max_failure_rate": 0.5, "min_success_rate": 0.5,
                    "device_timeout_seconds": self.options.duration_s, "seed": self.options.seed}
            if any(a.kind == "corrupt_download" for a in plan):
                self._corrupt_targets(model, version)
            created.append(self._client.request("POST", "/api/v1/rollouts", json=body))
            self.say(f"rollout {created[-1]['id']}: {ref}, waves {[w['size'] for w in created[-1]['waves']]}")
        started = time.monotonic()
        injector = threading.Thread(target=self._inject, args=(plan, started), name="edgefleet-faults", daemon=True)
        injector.start()
        deadline = started + self.options.duration_s
        views = created
        while time.monotonic() < deadline:
            views = [self._client.request("GET", f"/api/v1/rollouts/{r['id']}", params={"devices": "true"})
                     for r in created]
            # A rollout can complete with devices still in flight (min success rate < 1): wait for them too.
            settled = all(v["state"] in TERMINAL and not v["devices"].get("assigned") for v in views)
            if settled and not injector.is_alive():
                break
            time.sleep(1.0)
        injector.join(timeout=30)
        return views, started

    def _inject(self, plan: list[FaultAction], started: float) -> None:
        for action in plan:
            delay = started + action.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self._apply(action)
                self.fault_log.append({"at_s": round(time.monotonic() - started, 2), "fault": action.kind,
                                       "devices": len(action.devices)})
            except Exception as exc:  # a fault that cannot be done is reported, not fatal
                self.fault_log.append({"at_s": round(time.monotonic() - started, 2), "fault": action.kind,
                                       "error": str(exc)})
            self.say(f"fault: {action.kind} ({len(action.devices) or 'fleet'})")

    def _apply(self, action: FaultAction) -> None:
        if action.kind == "broker_restart":
            self.broker.restart(self.options.faults.broker_down_s)
        elif action.kind in ("network_down", "network_up"):
            for device_id in action.devices:
                if device_id in self.light:
                    fleet, _ = self.light[device_id]
                    (fleet.drop if action.kind == "network_down" else fleet.reconnect)(device_id)
                else:
                    agent = self.agents[device_id]
                    agent.stop() if action.kind == "network_down" else agent.start()
        elif action.kind == "sigkill":
            victims = self._updating(len(action.devices)) or list(action.devices)
            for device_id in victims:
                self.agents[device_id].kill()
            time.sleep(1.0)
            for device_id in victims:
                self.agents[device_id].start()

    def _updating(self, count: int, wait_s: float = 10.0) -> list[str]:
        """Up to ``count`` agents the server has assigned a version that have not finished yet."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            busy = sorted(r["device_id"] for rollout in self._client.request("GET", "/api/v1/rollouts")
                          for r in self._client.request("GET", f"/api/v1/rollouts/{rollout['id']}",
                                                        params={"devices": "true"})["device_records"]
                          if r["status"] == "assigned" and r["device_id"] in self.agents)
            if busy:
                return busy[:count]
            time.sleep(0.05)
        return []

    def _corrupt_targets(self, model: str, version: str) -> None:
        """Flip one byte in the middle of every stored copy of the target (TUF must refuse it)."""
        assert self.server is not None
        for path in (self.server.data_dir / "tuf" / "targets" / model).glob(f"*.{model}-{version}.tar.gz"):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

    # -- the report ---------------------------------------------------------------------------

    def _device_views(self) -> dict[str, Any]:
        from simulation.report import DeviceView

        views: dict[str, DeviceView] = {}
        for device_id, (_, device) in self.light.items():
            running = {name: version for name, (version, _sha) in dict(device.models).items()}
            views[device_id] = DeviceView(device_id, running, [e.payload for e in list(device.events)])
        for device_id, agent in self.agents.items():
            health = None
            with contextlib.suppress(Exception):
                health = agent.wait_ready(15).healthz()
            views[device_id] = DeviceView(device_id, dict((health or {}).get("models") or {}))
        return views

    def _report(self, views: list[dict[str, Any]], enrolled_s: float, started: float) -> dict[str, Any]:
        from simulation.report import fleet_report

        report = fleet_report(views, self._device_views())
        report.update({
            "mode": "processes" if self.options.processes else "light", "enroll_s": round(enrolled_s, 2),
            "rollout_s": round(time.monotonic() - started, 2),
            "rollouts": [{"id": v["id"], "model": v["model"], "version": v["version"], "state": v["state"],
                          "halt_reason": v["halt_reason"], "devices": v["devices"]} for v in views],
            "faults": self.fault_log, "fault_plan": self.options.faults.to_dict(),
        })
        # Lost messages fail the run, and so do devices still without an outcome at the end.
        report["ok"] = report["messages"]["lost"] == 0 and not report["unfinished"]
        return report


def _share_option(value: str | None, option: str) -> tuple[float, float]:
    return parse_share_duration(value, option) if value else (0.0, 0.0)


def options_from_args(args: argparse.Namespace) -> SimulateOptions:
    loss_share, loss_s = _share_option(args.network_loss, "--network-loss")
    skew_share, skew_s = _share_option(args.clock_skew, "--clock-skew")
    try:
        faults = FaultPlan(
            network_loss_share=loss_share, network_loss_s=loss_s,
            broker_restart_at_s=None if args.broker_restart is None else parse_seconds(args.broker_restart),
            sigkill=args.sigkill, corrupt_download=args.corrupt_download,
            slow_link_s=parse_seconds(args.slow_link) if args.slow_link else 0.0,
            clock_skew_share=skew_share, clock_skew_s=skew_s)
        duration = parse_seconds(args.duration)
    except ValueError as exc:
        raise FaultError(f"a time option is malformed: {exc}", fix="write times as 90, 90s, 2m or 1h") from exc
    return SimulateOptions(devices=args.devices, profile_mix=parse_profile_mix(args.profile_mix), server=args.server,
                           token=args.token, rollouts=tuple(args.rollout or ()), processes=args.processes,
                           faults=faults, duration_s=duration, seed=args.seed, data_dir=args.data_dir)


SIMULATE_HELP = """\
Enroll a simulated fleet, roll a model out to it in waves, inject faults, and report what the
fleet did: update latency per device (p50/p95/max), failures by reason, messages lost (must be
0) and duplicated.

Devices are light in-process devices by default (real MQTT, real signatures and TUF metadata,
no model runtime: thousands fit in one process) or real `edgefleet agent` processes with
--processes (small N). Without --server the simulator starts its own Mosquitto (or embedded
broker) and server and pushes a small model per profile.

faults:
  --network-loss 30%:10s    a share of devices loses the network for a while
  --broker-restart 5s       restart the broker this long into the rollout (own broker)
  --sigkill 2               SIGKILL agents while they update, then start them again (--processes)
  --corrupt-download        alter the served bundle's bytes; TUF must refuse it (--processes, own server)
  --slow-link 2s            every update step takes this much longer (light devices)
  --clock-skew 20%:3600s    a share of devices runs with its clock off (light devices)

examples:
  edgefleet simulate --devices 500 --profile-mix rpi4-64=70,jetson-orin-nano=30 --network-loss 20%:5s
  edgefleet simulate --devices 4 --processes --sigkill 1 --json
  edgefleet simulate --server http://fleet:8080 --devices 200 --rollout digits@1.2.0 --duration 5m
"""


def register_simulate(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a simulated fleet through a rollout with injected faults",
                       description=SIMULATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=50, help="how many devices (default 50)")
    p.add_argument("--profile-mix", default=DEFAULT_PROFILE_MIX,
                   help=f"PROFILE=WEIGHT,... (default {DEFAULT_PROFILE_MIX})")
    p.add_argument("--server", help="a running fleet server (default: start one here)")
    p.add_argument("--token", help="its admin token (default: $EDGEFLEET_TOKEN)")
    p.add_argument("--rollout", action="append", metavar="MODEL@VERSION",
                   help="what to roll out (repeatable; default without --server: a model per profile)")
    p.add_argument("--processes", action="store_true", help="real agent processes instead of light devices")
    p.add_argument("--duration", default="120s", help="longest time to wait for the rollouts (default 120s)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the fault and wave draws")
    p.add_argument("--data-dir", type=Path, help="keep files here (default: a temporary directory); a directory "
                                                 "an earlier run kept reuses the models it converted")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.add_argument("--network-loss", metavar="SHARE:DURATION", help="e.g. 30%%:10s: that share loses the network")
    p.add_argument("--broker-restart", metavar="AT", help="restart the own broker this long into the rollout")
    p.add_argument("--sigkill", type=int, default=0, metavar="N", help="SIGKILL N updating agents (--processes)")
    p.add_argument("--corrupt-download", action="store_true", help="alter the served bundle (--processes)")
    p.add_argument("--slow-link", metavar="DELAY", help="extra time per update step (light devices)")
    p.add_argument("--clock-skew", metavar="SHARE:OFFSET", help="e.g. 20%%:3600s: that share's clock is off")
    p.set_defaults(handler=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from edgefleet.console import format_kv, print_json

    options = options_from_args(args)
    workdir = options.data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-simulate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda _line: None) if args.json else (lambda line: print(line, flush=True))
    simulation = Simulation(options, workdir, say)
    simulation.supervisor.handle_signals()
    report = simulation.run()
    if args.json:
        print_json(report)
    else:
        latency = report["update_latency"]
        print(format_kv([
            ("devices", f"{report['devices']} ({report['mode']})"),
            ("rollouts", ", ".join(f"{r['model']}@{r['version']} {r['state']}" for r in report["rollouts"])),
            ("update latency", f"p50 {latency['p50_s']} s, p95 {latency['p95_s']} s, max {latency['max_s']} s "
                               f"over {latency['count']} device(s)"),
            ("failures", report["failures_by_reason"] or "none"),
            ("messages", f"{report['messages']['lost']} lost, {report['messages']['duplicated']} duplicated"),
            ("unfinished", f"{len(report['unfinished'])} device(s) still without an outcome"),
            ("faults", "; ".join(f"{f['fault']} at {f['at_s']} s" for f in report["faults"]) or "none"),
        ]))
    if options.data_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["ok"] else 1
