"""The edgefleet story, end to end, with real processes (what ``edgefleet demo`` runs).

1. train the models and convert them (``simulation.bundles``): for ``rpi4-64`` a digits
   classifier as ONNX int8 and a DataFrame pipeline with a string column as ONNX; for
   ``jetson-orin-nano`` the digits classifier as TFLite int8 and a camera CNN on 32x32 RGB
   pictures as TFLite full int8; show the conversion reports;
2. start a broker (Mosquitto when installed, enforcing the server's ACL; else the server's
   embedded one), the fleet server and N ``edgefleet agent`` processes, each enrolled with a
   one-time token through ``edgefleet agent enroll``;
3. roll out version 1 of the four models in waves; every device commits both of its models;
   predictions start flowing through every device's local API and keep flowing to the end: rows
   to the digits models, named records to the pipeline, PNG pictures to the camera model;
4. roll out version 2, whose golden samples disagree with its model: the first wave fails its
   health check, the rollout halts by itself and the touched devices are sent back to 1.0.0;
5. shift the inputs of the ``site=b`` devices and show what the fleet reports about drift,
   then roll out version 3 (a retrained digits model) to the whole fleet;
6. roll out version 4, the digits model trained on shifted data (inverted pictures), with a
   shadow stage: it passes its golden samples on every device of the first wave, but disagrees
   with version 3 on the live requests, so the shadow stage halts the rollout with the agreement
   as its reason and withdraws it; every device still serves 3.0.0 (issue 18).

Every step checks that what it claims happened did happen (``Step.problems``); the run is
``ok`` only if every step is, and failed predictions must be zero. The module deliberately
does not re-implement any part it shows: everything goes through the real CLI commands, the
REST API and the agents' local APIs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import EdgefleetError
from simulation.bundles import (
    IMAGE_KIND,
    IMAGE_TARGET,
    ONNX_TARGET,
    PIPELINE_KIND,
    PIPELINE_TARGET,
    SHIFTED_KIND,
    TFLITE_TARGET,
    DemoModels,
    break_golden,
)
from simulation.fleet import (
    AgentProcess,
    FleetError,
    MosquittoProcess,
    ServerProcess,
    Supervisor,
    mosquitto_binary,
    wait_until,
)
from simulation.load import PredictionLoad, image_requests, record_requests

Say = Callable[[str], None]
Target = tuple[str, str, str, str]
# What version 1 ships: (target, the example it is trained from). Each device gets two models.
RELEASE_1: tuple[tuple[Target, str], ...] = (
    (ONNX_TARGET, "digits-mlp"), (PIPELINE_TARGET, PIPELINE_KIND),
    (TFLITE_TARGET, "digits-mlp"), (IMAGE_TARGET, IMAGE_KIND),
)


STEPS = 6
# Step 6's shadow stage: the wave's devices compare at least this many live requests.
SHADOW_MIN_REQUESTS = 50
SHADOW_MIN_AGREEMENT = 0.98


def profile_of(device: int) -> str:
    """Devices alternate between the two profiles (device-00 is a Raspberry Pi)."""
    return ONNX_TARGET[0] if device % 2 == 0 else TFLITE_TARGET[0]


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 12
    broker: str = "auto"            # auto | mosquitto | embedded
    probation_s: float = 3.0
    bake_s: float = 2.0
    rollout_timeout_s: float = 120.0
    shadow_s: float = 10.0          # step 6's shadow stage per wave

    def __post_init__(self) -> None:
        if self.devices < 4:
            # Two per profile, so each rollout has a canary wave before the rest.
            raise ValueError(f"the demo needs at least 4 devices (two per profile), got {self.devices}")
        if self.broker not in ("auto", "mosquitto", "embedded"):
            raise ValueError(f"broker must be auto, mosquitto or embedded, got {self.broker!r}")


@dataclass
class Step:
    """One step of the story: how long it took, what it found, and what did not turn out as told."""

    number: int
    title: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.number, "title": self.title, "ok": self.ok, "seconds": round(self.seconds, 2),
                "problems": list(self.problems), **self.details}


class Demo:
    """Runs the story in ``workdir``; ``run()`` returns the summary (``summary["ok"]``)."""

    def __init__(self, options: DemoOptions, workdir: Path, say: Say) -> None:
        self.options = options
        self.workdir = Path(workdir)
        self.say = say
        self.supervisor = Supervisor(self.workdir / "logs")
        self.models = DemoModels(self.workdir / "models")
        self.steps: list[Step] = []
        self.agents: list[AgentProcess] = []
        self.server: ServerProcess | None = None
        self.broker_kind = ""
        self.load: PredictionLoad | None = None
        self.rollouts: list[dict[str, Any]] = []
        self._client: Any = None
        self.viewer_token = secrets.token_urlsafe(18)  # the console's read-only login, printed with --keep

    # -- the story -------------------------------------------------------------------------

    def run(self, *, keep_running: bool = False) -> dict[str, Any]:
        # The converter warns that loading a joblib file runs its code; the demo loads only the
        # model it has just trained itself, so the warning would only bury the story.
        logging.getLogger("converter.source").setLevel(logging.ERROR)
        started = time.monotonic()
        try:
            for number, (title, action) in enumerate([
                ("convert the models for two profiles", self._convert),
                ("start the server and enroll the fleet", self._start_fleet),
                ("roll out version 1 in waves", self._roll_out_v1),
                ("roll out a broken version 2: halt and roll back", self._roll_out_v2),
                ("drift on site=b, then version 3 to the whole fleet", self._drift_and_v3),
                ("version 4 passes its golden samples, the shadow stage stops it", self._shadow_v4),
            ], start=1):
                step = Step(number, title)
                self.steps.append(step)
                self.say(f"\n[{number}/{STEPS}] {title}")
                t0 = time.monotonic()
                try:
                    action(step)
                except EdgefleetError as exc:  # a process, the API or a wait failed: the step did not happen
                    step.problems.append(str(exc))
                step.seconds = time.monotonic() - t0
                self.say(f"      {'ok' if step.ok else 'FAILED: ' + '; '.join(step.problems)} ({step.seconds:.1f} s)")
                if not step.ok:
                    break
            summary = self._summary(time.monotonic() - started)
            if keep_running and self.server is not None:
                self.say(f"\nstill running: server {self.server.url}, data in {self.workdir}; Ctrl-C stops everything")
                self.say(f"web console: {self.server.url}/console/\n"
                         f"  log in with the admin token: {self.server.admin_token}\n"
                         f"  (also in {self.server.data_dir / 'admin-token'}), or read-only with the viewer token: "
                         f"{self.viewer_token}")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return summary
        finally:
            if self.load is not None:
                self.load.stop()
            if self._client is not None:
                self._client.close()
            self.supervisor.stop_all()

    def _convert(self, step: Step) -> None:
        from converter.report import format_report

        for target, kind in RELEASE_1:
            result = self.models.convert(target, "1.0.0", kind=kind)
            if self.models.reports[-1]["reused"]:
                self.say(f"      {target[1]} 1.0.0: reused the bundle an earlier run in {self.workdir} converted")
            self.say(format_report(result.report))
            step.expect(bool(result.report.get("passed", True)), f"{target[1]} 1.0.0 failed its conversion checks")
        step.details["bundles"] = [{k: r[k] for k in ("model", "version", "profile", "format", "quantize", "inputs",
                                                      "sha256")} for r in self.models.reports]

    def _start_fleet(self, step: Step) -> None:
        from fleet_server.cli.client import AdminClient, ClientSettings

        broker = self._choose_broker()
        mosquitto = MosquittoProcess(self.supervisor, self.workdir / "mosquitto").start() if broker == "mosquitto" else None
        self.server = ServerProcess(self.supervisor, self.workdir / "server", broker=mosquitto,
                                    config=self._write_server_config()).start()
        self.broker_kind = broker
        self.say(f"      server {self.server.url}, broker: {broker}")
        self._client = AdminClient(ClientSettings(self.server.url, self.server.admin_token))
        n = self.options.devices
        profiles = [profile_of(i) for i in range(n)]
        # Telemetry every second with drift counts in every batch, so step 5 sees drift within seconds.
        telemetry = {"telemetry_interval_s": 1, "telemetry_drift_every": 1}
        self.agents = [AgentProcess(self.supervisor, f"device-{i:02d}", self.workdir / "devices" / f"device-{i:02d}",
                                    probation_s=self.options.probation_s, settings=telemetry) for i in range(n)]

        server_url = self.server.url

        def enroll(i: int) -> None:
            # The site label alternates within each profile so site=b holds both kinds of device.
            site = "a" if (i // 2) % 2 == 0 else "b"
            grant = self._client.create_enrollment_token(profiles[i], {"site": site}, 900)
            self.agents[i].enroll(server_url, grant["token"]).start()  # runs `edgefleet agent enroll`

        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(enroll, range(n)))
        for agent in self.agents:
            agent.wait_ready()
        wait_until(lambda: sum(d["online"] for d in self._client.list_devices()) >= n, 60,
                   f"all {n} devices to be online at the server")
        devices = self._client.list_devices()
        step.expect(len(devices) == n, f"{len(devices)} devices enrolled, expected {n}")
        step.details.update({"server_url": self.server.url, "broker": broker, "devices": n,
                             "profiles": dict(Counter(d["profile"] for d in devices))})
        self.say(f"      {n} agents enrolled and online: {dict(Counter(d['profile'] for d in devices))}")
        # Rows to the digits models; named records to the pipeline (site=b's will name a region the
        # model never saw); PNG pictures to the camera model (site=b's over-exposed).
        # All of each validation set, so an unshifted site's inputs look like the drift reference.
        sources = {PIPELINE_TARGET[1]: record_requests(self.models.validation_records(), column="region",
                                                       unseen="south"),
                   IMAGE_TARGET[1]: image_requests(self.models.validation_pixels())}
        # 90 requests/s, two in three to the digits models: they keep the 60/s they had as the only
        # models (the drift rule needs 200 shifted rows before it fires), the new ones get 30/s.
        self.load = PredictionLoad(lambda: [a.url for a in self.agents], self.models.validation_rows(),
                                   sources=sources, row_weight=2, rate_per_s=90.0).start()

    def _roll_out_v1(self, step: Step) -> None:
        for report in self.models.reports:
            self._push(report["bundle"])
        started = [self._create(target, "1.0.0") for target, _ in RELEASE_1]
        finished = [self._wait(r, {"completed"}) for r in started]
        for r in finished:
            step.expect(r["state"] == "completed", f"{r['model']}@1.0.0 rollout ended {r['state']}: {r['halt_reason']}")
            step.expect(len(r["waves"]) >= 2, f"{r['model']}@1.0.0 rolled out in {len(r['waves'])} wave(s), not waves")
        expected = self._expected_versions({target[1]: "1.0.0" for target, _ in RELEASE_1})
        versions = self._wait_versions(expected, "every device to report 1.0.0 of both its models")
        step.expect(versions == expected, f"devices by version: {versions}, expected {expected}")
        served = sum(expected.values())  # (device, model) pairs
        wait_until(lambda: self.load is not None and self.load.totals()["models_answering"] == served, 30,
                   "predictions from every model on every device")
        time.sleep(1.0)  # let every device answer a few predictions before the broken version arrives
        by_model = self.load.totals()["by_model"] if self.load is not None else {}
        for name, figures in by_model.items():
            self.say(f"      {name}: {figures['ok']} predictions answered ({figures['form']})")
        step.details.update({"rollouts": [self._brief(r) for r in finished], "devices_by_version": versions})
        self._check_no_failed_requests(step)

    def _roll_out_v2(self, step: Step) -> None:
        broken = break_golden(Path(self.models.reports[0]["bundle"]), self.workdir / "models" / "bundles",
                              version="2.0.0")
        self._push(str(broken))
        rollout = self._create(ONNX_TARGET, "2.0.0", auto_rollback=True)
        final = self._wait(rollout, {"rolled_back", "halted", "completed", "aborted"}, devices=True)
        step.expect(final["state"] == "rolled_back", f"the broken rollout ended {final['state']}, not rolled_back")
        step.expect(bool(final["halt_reason"]), "the rollout did not halt by itself")
        records = final.get("device_records", [])
        touched = [r for r in records if r["assigned_at"]]
        untouched = [r for r in records if not r["assigned_at"] and r["status"] != "ineligible"]
        first_wave = [r for r in records if r["wave"] == 0]
        step.expect(bool(touched) and all(r["wave"] == 0 for r in touched),
                    f"devices outside the first wave were assigned 2.0.0: {[r['device_id'] for r in touched]}")
        step.expect(all(r["status"] == "rolled_back" for r in first_wave),
                    f"first-wave devices not sent back: {[(r['device_id'], r['status']) for r in first_wave]}")
        reasons = sorted({str(r.get("reason")) for r in touched})
        expected = self._expected_versions({target[1]: "1.0.0" for target, _ in RELEASE_1})
        versions = self._wait_versions(expected, "every device to serve 1.0.0 again")
        step.expect(versions == expected, f"devices by version after rollback: {versions}")
        self.say(f"      halted: {final['halt_reason']}")
        self.say(f"      {len(touched)} touched device(s) rolled back, {len(untouched)} never saw 2.0.0")
        step.details.update({"rollout": self._brief(final), "touched": len(touched), "untouched": len(untouched),
                             "device_reasons": reasons, "devices_by_version": versions})
        self._check_no_failed_requests(step)

    def _drift_and_v3(self, step: Step) -> None:
        assert self.load is not None
        site_b = [a for i, a in enumerate(self.agents) if (i // 2) % 2 == 1]
        self.load.shift([a.url for a in site_b])
        self.say(f"      inputs of {len(site_b)} site=b device(s) shifted (brighter, saturated pixels and pictures; "
                 f"records from a region the pipeline never saw)")
        step.details["drift"] = self._drift_report(step, site_b)
        for target in (ONNX_TARGET, TFLITE_TARGET):
            self._push(str(self.models.convert(target, "3.0.0", kind="digits-small-mlp").bundle_path))
        started = [self._create(ONNX_TARGET, "3.0.0"), self._create(TFLITE_TARGET, "3.0.0")]
        finished = [self._wait(r, {"completed"}) for r in started]
        for r in finished:
            step.expect(r["state"] == "completed", f"{r['model']}@3.0.0 rollout ended {r['state']}: {r['halt_reason']}")
        expected = self._expected_versions({PIPELINE_TARGET[1]: "1.0.0", IMAGE_TARGET[1]: "1.0.0",
                                            ONNX_TARGET[1]: "3.0.0", TFLITE_TARGET[1]: "3.0.0"})
        versions = self._wait_versions(expected, "every device to report 3.0.0 of its digits model")
        step.expect(versions == expected, f"devices by version: {versions}, expected {expected}")
        step.details.update({"rollouts": [self._brief(r) for r in finished], "devices_by_version": versions})
        self._check_no_failed_requests(step)

    def _shadow_v4(self, step: Step) -> None:
        converted = self.models.convert(ONNX_TARGET, "4.0.0", kind=SHIFTED_KIND)
        step.expect(bool(converted.report.get("passed", True)), "digits 4.0.0 failed its conversion checks")
        self._push(str(converted.bundle_path))
        self.say("      digits@4.0.0: the same MLP trained on inverted pictures (shifted data); its golden "
                 "samples come from that data")
        rollout = self._create(ONNX_TARGET, "4.0.0", stage={"shadow": {
            "seconds": self.options.shadow_s, "min_agreement": SHADOW_MIN_AGREEMENT,
            "min_requests": SHADOW_MIN_REQUESTS}})
        final = self._wait(rollout, {"halted"}, devices=True)
        step.expect(final["state"] == "halted", f"the shifted version's rollout ended {final['state']}, not halted")
        reason = final["halt_reason"]
        step.expect(reason.startswith("shadow agreement"), f"it halted for another reason: {reason!r}")
        self.say(f"      halted: {reason}")
        first = [r for r in final.get("device_records", []) if r["wave"] == 0]
        # `shadowing` comes only after the candidate's health check passed on the device.
        step.expect(bool(first) and all(r["last_event"] == "shadowing" and r["status"] == "withdrawn" for r in first),
                    f"wave 1 did not pass its golden samples, shadow and get the candidate withdrawn: "
                    f"{[(r['device_id'], r['status'], r['last_event'], r['reason']) for r in first]}")
        step.expect(all(r["status"] == "pending" for r in final.get("device_records", []) if r["wave"] == 1),
                    "devices beyond wave 1 were sent the shifted version")
        expected = self._expected_versions({PIPELINE_TARGET[1]: "1.0.0", IMAGE_TARGET[1]: "1.0.0",
                                            ONNX_TARGET[1]: "3.0.0", TFLITE_TARGET[1]: "3.0.0"})
        versions = self._wait_versions(expected, "every device to still serve 3.0.0 of its digits model")
        step.expect(versions == expected, f"devices by version: {versions}, expected {expected}")
        stage = final["waves"][0].get("stage") or {}
        step.details.update({"rollout": self._brief(final), "stage": stage.get("figures"),
                             "golden_samples_passed": len(first), "devices_by_version": versions})
        self._check_no_failed_requests(step)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def alerts_file(self) -> Path:
        return self.workdir / "alerts.jsonl"

    def _write_server_config(self) -> Path:
        """The server's alert rules: input drift on any site of version 1, evaluated every second.

        The rule's ``retrain`` hook runs a command with the alert on stdin; here it only appends
        the alert to alerts.jsonl, which is how the demo sees it fire (a real fleet would start
        a retraining job there, as version 3 stands for).
        """
        sink = f"import sys; open({str(self.alerts_file)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"
        config = self.workdir / "server.toml"
        config.write_text(
            f"viewer_token = \"{self.viewer_token}\"\n\n"  # the console's read-only login (docs/console.md)
            "[alerts]\nevaluate_every_s = 1\n"
            f"retrain_command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(sink)}]\n\n"
            "[[alerts.rules]]\nname = \"input-drift\"\nkind = \"drift\"\nband = \"drift\"\n"
            f"match = \"{ONNX_TARGET[1]}*@1.0.0 site=*\"\nretrain = true\n")
        return config

    def _fired_alerts(self) -> list[dict[str, Any]]:
        if not self.alerts_file.exists():
            return []
        events = [json.loads(line) for line in self.alerts_file.read_text().splitlines() if line.strip()]
        return [e for e in events if e.get("state") == "firing"]

    def _site_drift(self, model: str = ONNX_TARGET[1]) -> dict[str, Any]:
        """The server's drift report for version 1 of ``model``, grouped by site."""
        answer: dict[str, Any] = self._client.request("GET", f"/api/v1/models/{model}/1.0.0/drift",
                                                      params={"by": "site"})
        return answer

    @staticmethod
    def _groups(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {str(g.get("group")): {k: g.get(k) for k in ("max_psi", "band", "devices", "requests")}
                for g in answer.get("groups", [])}

    def _drift_report(self, step: Step, shifted: list[AgentProcess]) -> dict[str, Any]:
        """Wait until the server scores site=b as drifted and its alert fires; show the figures by site."""
        assert self.server is not None
        with contextlib.suppress(FleetError):
            wait_until(lambda: self._groups(self._site_drift()).get("site=b", {}).get("band") == "drift"
                       and any("site=b" in str(a.get("subject")) for a in self._fired_alerts()),
                       45, "site=b drift and its alert", every=1.0)
        answer = self._site_drift()
        groups = self._groups(answer)
        alerts = self._fired_alerts()
        report: dict[str, Any] = {"shifted_devices": len(shifted), "by_site": groups,
                                  "alerts": [{k: a.get(k) for k in ("alert", "subject", "value", "message")}
                                             for a in alerts]}
        for site, figures in sorted(groups.items()):
            self.say(f"      {ONNX_TARGET[1]}@1.0.0 {site}: max PSI {figures['max_psi']} ({figures['band']}) "
                     f"over {figures['requests']} predictions")
        for alert in alerts:
            self.say(f"      ALERT {alert.get('message')}")
        # The other models' figures as they stand (shown, not waited for: the alert rule is the digits').
        for model in (IMAGE_TARGET[1], PIPELINE_TARGET[1]):
            figures_by_site = self._groups(self._site_drift(model))
            report[f"{model}_by_site"] = figures_by_site
            for site, figures in sorted(figures_by_site.items()):
                self.say(f"      {model}@1.0.0 {site}: max PSI {figures['max_psi']} ({figures['band']}) "
                         f"over {figures['requests']} predictions")
        step.expect(groups.get("site=b", {}).get("band") == "drift",
                    f"the server does not score site=b as drifted within 45 s: {groups}")
        step.expect(any("site=b" in str(a.get("subject")) for a in alerts),
                    "no drift alert fired for site=b within 45 s (see logs/server.log)")
        # Not a failure of the story, but said out loud: an alert on a site whose inputs were not shifted.
        report["unshifted_alerts"] = [a.get("subject") for a in alerts if "site=a" in str(a.get("subject"))]
        if report["unshifted_alerts"]:
            self.say(f"      note: alerts on unshifted devices too: {', '.join(map(str, report['unshifted_alerts']))}")
        return report

    def _choose_broker(self) -> str:
        if self.options.broker != "auto":
            return self.options.broker
        return "mosquitto" if mosquitto_binary() else "embedded"

    def _push(self, bundle: str) -> None:
        pushed = self._client.push_model(Path(bundle))
        self.say(f"      pushed {pushed['name']}@{pushed['version']} ({pushed['length']} bytes)")

    def _create(self, target: tuple[str, str, str, str], version: str, *, auto_rollback: bool = False,
                stage: dict[str, Any] | None = None) -> dict[str, Any]:
        profile, model = target[0], target[1]
        body = {"model": model, "version": version, "selector": f"profile={profile}", "waves": [20.0, 100.0],
                "bake_seconds": self.options.bake_s, "max_failure_rate": 0.0, "min_success_rate": 1.0,
                "device_timeout_seconds": 90.0, "auto_rollback": auto_rollback, "seed": 7, **(stage or {})}
        rollout: dict[str, Any] = self._client.request("POST", "/api/v1/rollouts", json=body)
        self.rollouts.append(rollout)
        self.say(f"      rollout {rollout['id']}: {model}@{version} to profile={profile}, "
                 f"waves {[w['size'] for w in rollout['waves']]}")
        return rollout

    def _wait(self, rollout: dict[str, Any], states: set[str], *, devices: bool = False) -> dict[str, Any]:
        """Poll the rollout, printing each change of wave or state, until it reaches one of ``states``."""
        terminal = {"completed", "rolled_back", "halted", "aborted"}
        seen = ""
        deadline = time.monotonic() + self.options.rollout_timeout_s
        while True:
            view: dict[str, Any] = self._client.request("GET", f"/api/v1/rollouts/{rollout['id']}",
                                                        params={"devices": str(devices).lower()})
            progress = f"{view['state']} wave {view['current_wave'] + 1 if view['current_wave'] is not None else '-'}: " \
                       + ", ".join(f"{k} {v}" for k, v in view["devices"].items())
            wave = view["waves"][view["current_wave"]] if view["current_wave"] is not None else {}
            if wave.get("stage_summary"):  # a shadow or canary stage: its state and figures so far
                progress += f"; {wave['stage']['mode']} {wave['stage_summary']}"
            if progress != seen:
                self.say(f"      {view['model']}@{view['version']}: {progress}")
                seen = progress
            # A halted rollout with auto-rollback is still sending devices back: wait for rolled_back.
            if view["state"] in states or (view["state"] in terminal and not (view["state"] == "halted"
                                                                              and view["policy"]["auto_rollback"])):
                return view
            if time.monotonic() > deadline:
                raise FleetError(f"rollout {view['id']} still {view['state']} after {self.options.rollout_timeout_s:.0f} s")
            time.sleep(0.5)

    def _versions(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for device in self._client.list_devices():
            models = (device.get("reported") or {}).get("models") or {}
            for name, info in models.items():
                counts[f"{name}@{info.get('version')}"] += 1
            if not models:
                counts["(none)"] += 1
        return dict(sorted(counts.items()))

    def _expected_versions(self, versions: dict[str, str]) -> dict[str, int]:
        """``model@version`` -> devices, for every model of ``versions`` on every device of its profile."""
        profiles = Counter(profile_of(i) for i in range(len(self.agents)))
        return dict(sorted((f"{target[1]}@{versions[target[1]]}", profiles[target[0]]) for target, _ in RELEASE_1))

    def _wait_versions(self, expected: dict[str, int], what: str) -> dict[str, int]:
        with contextlib.suppress(FleetError):
            wait_until(lambda: self._versions() == expected, 30, what, every=0.5)
        return self._versions()

    def _check_no_failed_requests(self, step: Step) -> None:
        assert self.load is not None
        totals = self.load.totals()
        step.details["requests"] = totals
        step.expect(totals["failed"] == 0, f"{totals['failed']} prediction(s) failed: {totals['failures_by_reason']}")

    @staticmethod
    def _brief(view: dict[str, Any]) -> dict[str, Any]:
        return {"id": view["id"], "model": view["model"], "version": view["version"], "state": view["state"],
                "halt_reason": view["halt_reason"], "waves": [w["size"] for w in view["waves"]],
                "devices": view["devices"]}

    def _summary(self, seconds: float) -> dict[str, Any]:
        requests = self.load.totals() if self.load is not None else {"requests": 0, "failed": 0, "by_model": {}}
        versions = self._versions() if self._client is not None and self.server is not None else {}
        ok = len(self.steps) == STEPS and all(s.ok for s in self.steps) and requests["failed"] == 0
        url = self.server.url if self.server else None
        return {
            "ok": ok, "seconds": round(seconds, 2), "workdir": str(self.workdir), "broker": self.broker_kind,
            "devices": self.options.devices, "steps": [s.to_dict() for s in self.steps],
            "devices_by_version": versions, "requests": requests["requests"], "failed_requests": requests["failed"],
            "requests_by_model": requests["by_model"],
            "rollouts": [r["id"] for r in self.rollouts], "server_url": url,
            "next": [f"edgefleet rollouts list --server {url} --token $(cat {self.workdir}/server/admin-token)",
                     f"edgefleet rollouts status ROLLOUT_ID --server {url}",
                     f"logs of every process: {self.workdir}/logs/"],
        }
