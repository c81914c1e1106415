"""The kill-loop (issue 19): seeded SIGKILLs of an agent across every update state, and of the server.

Real processes (tests/support/fleet.py): Mosquitto with per-device ACLs, `edgefleet server`
and two `edgefleet agent run` daemons. `dut` is the device under test: every iteration rolls
out a version to both devices (one wave, no bake, auto-rollback) and, as the iteration's plan
says, SIGKILLs the dut at an exact point of its update, using the agent's fault hooks
(agent/update_service.py: EDGEFLEET_FAULT_PAUSE_AT pauses right after update.json says that
state, EDGEFLEET_FAULT_PAUSE_AT_BYTE once that much of the download is on disk):

* at `downloading` (before a byte), at a random byte of the download, at `verified`,
  `staged`, `health_check` and `activated` (inside probation: the restart is counted and
  probation carries on to a commit);
* twice inside one probation window with `probation_max_restarts` 2, the second kill right
  after the restarted agent wrote its restart (the machine and probation state are one record
  written once, issue 19 hole 1, so that is the window where the old two writes were split):
  the device must roll back (crash loop);
* sometimes the server too: once the devices hold the bundle, before the dut's kill, while
  the dut is paused, or after the dut restarted (the dut then finishes while the server is
  down: issue 19 hole 2). The server is never down while a device still needs to download:
  a download that fails is retried after the agent's `retry_after_s` (60 s, no setting for
  it yet), which would make an iteration last a minute; its recovery is covered by
  tests/integration/update_path.

Whatever was killed is started again. Some iterations roll out a version whose golden
samples fail (the health check refuses it). After each iteration, once the rollout has ended:

* the dut serves a pushed model: the version the plan expects, from a slot that is the
  bundle pushed for it (its model file byte for byte the bundle's model member), never the
  broken one, and it answers predictions with it;
* the server's record for the dut equals what it serves: the rollout's device record
  (status, `serves`) and the report the server stored (version and bundle sha256);
* the rollout ends in the terminal state the plan implies (`completed`, or `rolled_back`
  after a refused version or a crash loop);
* the steady client, predicting against the other device all along, saw no failed request.

`test_every_kind_of_kill_once` runs each kind of plan once (in scripts/test);
`test_kill_loop` runs ITERATIONS seeded iterations per seed (marked slow: 2 seeds x 30 take
several minutes here), run by `scripts/bench --slow-tests tests/e2e/test_kill_loop.py`. More
seeds: EDGEFLEET_KILL_LOOP_SEEDS=1,2,3 EDGEFLEET_KILL_LOOP_ITERATIONS=50 in front of that.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.bundle import Bundle, read_bundle
from simulation.fleet import mosquitto_binary
from tests.support.bundles import make_broken_bundle, make_onnx_bundle
from tests.support.fleet import Fleet, FleetAgent, Load, wait_for

pytestmark = pytest.mark.mosquitto

MODEL = "digits"
GOOD = ("1.0.0", "2.0.0")
BROKEN = "2.1.0"
PAUSE = "fault injection: pausing"
STATES = ("downloading", "verified", "staged", "health_check", "activated")
BEFORE_ACTIVATION = ("none", "byte", "downloading", "verified", "staged", "health_check")
AGENT_KILLS = (*BEFORE_ACTIVATION, "activated", "probation_twice")
SERVER_KILLS = ("before", "during", "after")
FINISHED = ("committed", "failed", "rolled_back", "idle")
# The dut needs no traffic to commit (no client may count its kills as failures); the steady
# device gets the steady client's.
DUT_ENV = {"EDGEFLEET_PROBATION_S": "1", "EDGEFLEET_PROBATION_MIN_REQUESTS": "0"}
STEADY_ENV = {"EDGEFLEET_PROBATION_S": "1", "EDGEFLEET_PROBATION_MIN_REQUESTS": "3"}
# A crash loop: two restarts inside a probation that nothing else can end during the test.
CRASH_LOOP_ENV = {"EDGEFLEET_PROBATION_MAX_RESTARTS": "2", "EDGEFLEET_PROBATION_S": "600"}

SEEDS = tuple(int(s) for s in os.environ.get("EDGEFLEET_KILL_LOOP_SEEDS", "1919,2026").split(","))
ITERATIONS = int(os.environ.get("EDGEFLEET_KILL_LOOP_ITERATIONS", "30"))


@dataclass(frozen=True)
class Plan:
    """One iteration: which version goes out, where the dut dies, whether and when the server does."""

    broken: bool = False
    agent: str = "none"          # AGENT_KILLS
    server: str | None = None    # SERVER_KILLS, or None

    @property
    def expected_state(self) -> str:
        return "rolled_back" if self.broken or self.agent == "probation_twice" else "completed"

    @staticmethod
    def draw(rng: random.Random) -> Plan:
        broken = rng.random() < 0.15
        agent = rng.choice(BEFORE_ACTIVATION if broken else AGENT_KILLS)
        server = rng.choice(SERVER_KILLS) if rng.random() < 0.3 else None
        if server == "during" and agent == "none":
            server = "after"
        if server in ("during", "after") and agent in ("byte", "downloading"):
            server = "before"  # the restarted dut must download: not while the server is down
        return Plan(broken, agent, server)


# Every kind of kill once, the server's three kill points among them.
EVERY_KIND = (
    Plan(agent="byte", server="before"),
    Plan(agent="downloading"),
    Plan(agent="verified", server="during"),
    Plan(agent="staged"),
    Plan(agent="health_check", server="after"),
    Plan(agent="activated"),
    Plan(agent="probation_twice", server="during"),
    Plan(broken=True, agent="health_check"),
    Plan(agent="none", server="after"),
)


@dataclass(frozen=True)
class Bundles:
    paths: dict[str, Path]
    read: dict[str, Bundle]
    rows: list[list[float]]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    directory = tmp_path_factory.mktemp("kill-loop-bundles")
    paths = {v: make_onnx_bundle(directory, name=MODEL, version=v) for v in GOOD}
    paths[BROKEN] = make_broken_bundle(directory, name=MODEL, version=BROKEN)
    read = {v: read_bundle(p) for v, p in paths.items()}
    rows = [[float(x) for x in row] for row in read[GOOD[0]].golden()["inputs"][:2]]
    return Bundles(paths, read, rows)


class KillLoop:
    """The fleet of one kill-loop run and the iteration driver."""

    def __init__(self, fleet: Fleet, bundles: Bundles, rng: random.Random) -> None:
        self.fleet = fleet
        self.bundles = bundles
        self.rng = rng
        self.dut = fleet.enroll("dut", labels={"site": "lab"}, install=bundles.paths[GOOD[0]])
        self.steady = fleet.enroll("steady", labels={"site": "lab"}, install=bundles.paths[GOOD[0]])
        self.dut.start(DUT_ENV)
        self.steady.start(STEADY_ENV)
        fleet.wait_online([self.dut, self.steady])
        for path in bundles.paths.values():
            fleet.server.push(path)
        self.serving = GOOD[0]
        self.history: list[str] = []
        self.load: Load | None = None  # the steady client, on the steady device

    # -- one iteration --------------------------------------------------------------------------
    def run(self, index: int, plan: Plan) -> None:
        self.history.append(f"{index}: {plan}")
        target = BROKEN if plan.broken else next(v for v in GOOD if v != self.serving)
        if plan.agent != "none":
            self._restart_dut(self._fault_env(plan, target))
        pauses = self.dut.log().count(PAUSE)
        rollout = self._create(target)
        if plan.server == "before":
            self._wait_bundles(rollout, pauses + 1 if plan.agent != "none" else None)
            self._restart_server()
        if plan.agent != "none":
            self._wait_pause(pauses + 1)
            if plan.server == "during":
                self._wait_bundles(rollout, pauses + 1)
                self.fleet.server.kill()
            self.dut.kill()
            if plan.agent == "probation_twice":
                self.dut.start({**DUT_ENV, **CRASH_LOOP_ENV, "EDGEFLEET_FAULT_PAUSE_AT": "activated"})
                self._wait_pause(pauses + 2)  # paused right after the restart was written
                self.dut.kill()
                self.dut.start({**DUT_ENV, **CRASH_LOOP_ENV})
            else:
                self.dut.start(DUT_ENV)
        if plan.server == "after":
            self._wait_bundles(rollout, None)
            self.fleet.server.kill()
            # The dut carries on (and may finish) while nobody listens.
            wait_for(lambda: self.dut.update().get("state") in FINISHED, 20, "the dut to finish without a server",
                     explain=self._explain)
        if plan.server in ("during", "after"):
            self.fleet.server.start()
        self._check(rollout, plan, target)
        if plan.agent == "probation_twice":
            self._restart_dut(DUT_ENV)  # back to a probation that can commit, for the next iterations

    def _fault_env(self, plan: Plan, target: str) -> dict[str, str]:
        if plan.agent == "byte":
            length = self.bundles.read[target].size
            return {**DUT_ENV, "EDGEFLEET_FAULT_PAUSE_AT_BYTE": str(self.rng.randrange(1, length))}
        state = "activated" if plan.agent == "probation_twice" else plan.agent
        extra = CRASH_LOOP_ENV if plan.agent == "probation_twice" else {}
        return {**DUT_ENV, **extra, "EDGEFLEET_FAULT_PAUSE_AT": state}

    def _restart_dut(self, env: dict[str, str]) -> None:
        self.dut.kill()
        self.dut.start(env)

    def _restart_server(self) -> None:
        self.fleet.server.kill()
        self.fleet.server.start()

    def _wait_bundles(self, rollout_id: str, paused: int | None) -> None:
        """Until each device holds the rollout's bundle (or has finished with it), the dut's pause counting as holding."""
        def holds(agent: FleetAgent) -> bool:
            update = agent.update()
            return update.get("rollout_id") == rollout_id and update.get("state") not in ("assigned", "downloading")

        def ready() -> bool:
            dut_paused = paused is not None and self.dut.log().count(PAUSE) >= paused
            return holds(self.steady) and (dut_paused or holds(self.dut))

        wait_for(ready, 30, "both devices to hold the bundle", explain=self._explain)

    def _wait_pause(self, count: int) -> None:
        wait_for(lambda: self.dut.log().count(PAUSE) >= count, 30, f"the dut's fault pause #{count}",
                 explain=self._explain)

    def _create(self, version: str) -> str:
        response = self.fleet.server.api("POST", "/rollouts", json={
            "model": MODEL, "version": version, "selector": "site=lab", "waves": [100], "bake_seconds": 0,
            "max_failure_rate": 0, "min_success_rate": 1, "device_timeout_seconds": 180, "auto_rollback": True})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    # -- the checks ------------------------------------------------------------------------------
    def _check(self, rollout_id: str, plan: Plan, target: str) -> None:
        done = self.fleet.server.wait_rollout(rollout_id, {"completed", "halted", "rolled_back", "aborted"}, 120)
        assert done["state"] == plan.expected_state, f"{plan}: {done['state']}\n{json.dumps(done['log'], indent=1)}"
        expected = target if done["state"] == "completed" else self.serving
        for agent in (self.dut, self.steady):
            wait_for(lambda a=agent: self._settled(a, expected), 60, f"{agent.name} to settle on {expected}",
                     explain=self._explain)
            self._serves_pushed_model(agent, expected)
        # The server's record for the dut equals what the dut serves.
        sha = self.bundles.read[expected].sha256

        def recorded() -> bool:
            record = next(r for r in self.fleet.server.rollout(rollout_id)["device_records"]
                          if r["device_id"] == self.dut.device_id)
            reported = (self.fleet.server.device(self.dut.device_id).get("reported") or {}).get("models", {})
            status = "committed" if done["state"] == "completed" else "rolled_back"
            return (record["serves"] == expected and record["status"] == status
                    and reported.get(MODEL) == {"version": expected, "sha256": sha})

        wait_for(recorded, 20, "the server's record of the dut to equal what it serves", explain=self._explain)
        if plan.agent == "probation_twice":
            update = self.dut.update()
            assert update["reason"] == "probation_failed", update
        assert self.load is not None and self.load.failed == {}, self.load and self.load.failed
        self.serving = expected

    def _settled(self, agent: FleetAgent, expected: str) -> bool:
        accepted = agent.accepted_assignment() or {}
        return (agent.update().get("state") in FINISHED and agent.active_version(MODEL) == expected
                and accepted.get("counter") == self.fleet.server.device(agent.device_id)["assignment_counter"])

    def _serves_pushed_model(self, agent: FleetAgent, version: str) -> None:
        bundle = self.bundles.read[version]
        active = json.loads((agent.state_dir / "models" / MODEL / "active.json").read_text())
        assert active["version"] == version and active["sha256"] == bundle.sha256, active
        assert active["sha256"] != self.bundles.read[BROKEN].sha256
        model_file = agent.state_dir / "models" / MODEL / "slots" / bundle.sha256 / bundle.manifest.model_file
        assert hashlib.sha256(model_file.read_bytes()).digest() == hashlib.sha256(bundle.model_bytes).digest()
        answer = agent.predict(MODEL, self.bundles.rows)
        assert answer.status_code == 200 and answer.json()["version"] == version, answer.text

    def _explain(self) -> str:
        return (f"plans: {self.history[-3:]}\ndut update: {self.dut.update()}\nsteady update: {self.steady.update()}\n"
                f"--- dut log ---\n{self.dut.log()[-3000:]}\n--- server log ---\n{self.fleet.server.log()[-3000:]}")


@pytest.fixture
def kill_loop_fleet(tmp_path: Path) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    with Fleet(tmp_path) as running:
        yield running


def _run(fleet: Fleet, bundles: Bundles, seed: int, plans: list[Plan]) -> None:
    loop = KillLoop(fleet, bundles, random.Random(seed))
    with Load([loop.steady], MODEL, bundles.rows) as load:
        loop.load = load
        for index, plan in enumerate(plans):
            loop.run(index, plan)
    assert load.failed == {}, load.failed
    assert load.served(loop.steady.name) > 0


def test_every_kind_of_kill_once(kill_loop_fleet: Fleet, bundles: Bundles) -> None:
    _run(kill_loop_fleet, bundles, 0, list(EVERY_KIND))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 30 iterations took 290-300 s at load 13 on 2 cores; the suite's 300 s is for one test
@pytest.mark.parametrize("seed", SEEDS)
def test_kill_loop(kill_loop_fleet: Fleet, bundles: Bundles, seed: int) -> None:
    rng = random.Random(seed)
    plans = [Plan.draw(rng) for _ in range(ITERATIONS)]
    _run(kill_loop_fleet, bundles, seed, plans)
