"""Fixtures shared by the whole suite: a real Mosquitto, and real databases at the newest migration.

The migrations run once per session (per xdist worker): on a PostgreSQL template database and
on an SQLite file. Each test gets its own copy (``CREATE DATABASE ... TEMPLATE``, a file copy),
so no test sees another's rows and none pays for the migrations again.

Our packages' bytecode is written once per run before anything imports them
(``_compile_our_packages``: this machine sets PYTHONDONTWRITEBYTECODE).

The longest tests are handed out first (``pytest_collection_modifyitems`` and
``pytest_xdist_make_scheduler``).

Under pytest-xdist each worker hands out only its own share of ports (simulation.fleet's
``free_port``), and its databases and temporary directories have names of their own.
"""

from __future__ import annotations

import compileall
import functools
import json
import os
import py_compile
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulation.databases import (
    migrated_postgres,
    migrated_sqlite,
    postgres_available,
    postgres_database,
    sqlite_copy,
)
from simulation.fleet import MosquittoProcess, mosquitto_binary
from tests.support.shared import SHARED_ENV, shared_dir

# Our packages, compiled once per run before any worker or process imports them (see below).
COMPILED = ("edgefleet", "agent", "fleet_server", "converter", "simulation", "bench", "tests")


def _compile_our_packages() -> None:
    """Write our modules' bytecode (``__pycache__``, git-ignored) if the environment says not to.

    With PYTHONDONTWRITEBYTECODE (this machine sets it) no process writes a .pyc, so every
    `edgefleet server`, agent and CLI process the tests start, and every xdist worker, compiled
    all of our modules from source again: about 0.3 s of CPU for a server, 4 s for a worker's
    collection. Reading a .pyc is still allowed. checked-hash: a .pyc is used only while its
    source's hash matches, so a file edited during the run is compiled from source as before.
    """
    if not sys.dont_write_bytecode:
        return  # each process caches what it compiles by itself
    root = Path(__file__).resolve().parents[1]
    for package in COMPILED:
        compileall.compile_dir(root / package, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under xdist
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and count.isdigit():
        os.environ["EDGEFLEET_PORT_SLOT"] = f"{int(worker[2:])}/{count}"
    elif not worker:
        _compile_our_packages()  # the controller (or the only process), before the workers start
    if not worker and not os.environ.get(SHARED_ENV):
        # The controller (or the only process): a directory every worker inherits through the
        # environment, for what is built once per run (tests/support/bundles.py's examples).
        # scripts/test makes its own, kept for its second pass (scripts/test-tflite-runtime).
        shared = tempfile.mkdtemp(prefix="edgefleet-tests-")
        os.environ[SHARED_ENV] = shared
        config.add_cleanup(functools.partial(shutil.rmtree, shared, ignore_errors=True))


# Paths whose tests take tens of seconds to minutes each (real fleets, rollouts with probation
# windows, whole scripts), longest first as measured on the 2-core CI machine. Tests outside
# them take a second or less, so only these need a place in the order.
LONG_FIRST = (
    "tests/e2e/test_walkthrough.py",
    "tests/e2e/test_demo.py",
    "tests/e2e/test_kill_loop.py",
    "tests/e2e/",
    "tests/integration/update_path/",
    "tests/integration/server/test_openapi_fuzz.py",
    "tests/unit/agent/test_tflite.py",
)


def _long_rank(item: pytest.Item) -> int:
    return next((rank for rank, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))


def _shares_module_fixtures(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's; absent on non-function items
    if info is None:
        return False
    return any(defs[-1].scope in ("module", "class", "package") for defs in info.name2fixturedefs.values() if defs)


GROUPS_FILE = "xdist-module-groups.json"  # in tests/support/shared.py's directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order pytest-xdist hands the tests out in (``LongFirstScheduling`` below): long tests first.

    The run lasts as long as its busiest worker, so a minutes-long test handed out last keeps
    one worker busy after the others are done. A worker holds the test it runs and the next
    one, so each long test is followed by a short one: no long test queues behind another
    while a worker runs short ones. A stable sort, the same in every worker, as xdist requires.

    A module with module-scoped fixtures (a fleet, a trained model; and its tests may build on
    each other, as the console's do) runs on one worker, in order: the workers name those
    modules in the shared directory for the scheduler, which sees only test ids.
    """
    grouped = sorted({item.nodeid.split("::", 1)[0] for item in items if _shares_module_fixtures(item)})
    shared = shared_dir()
    if shared is not None and os.environ.get("PYTEST_XDIST_WORKER"):
        partial = shared / f"{GROUPS_FILE}.{os.environ['PYTEST_XDIST_WORKER']}"
        partial.write_text(json.dumps(grouped))
        partial.replace(shared / GROUPS_FILE)  # every worker writes the same list, whole
    ranked = sorted(items, key=_long_rank)  # stable: collection order within a rank
    long = [item for item in ranked if _long_rank(item) < len(LONG_FIRST)]
    fillers = [item for item in ranked if _long_rank(item) == len(LONG_FIRST) and not _shares_module_fixtures(item)]
    ordered: list[pytest.Item] = []
    fill = iter(fillers)
    for index, item in enumerate(long):
        ordered.append(item)
        following = long[index + 1] if index + 1 < len(long) else None
        if following is not None and _shares_module_fixtures(item) and following.path == item.path:
            continue  # a group stays in one piece
        filler = next(fill, None)
        if filler is not None:
            ordered.append(filler)
    used = set(map(id, ordered))
    ordered += [item for item in ranked if _long_rank(item) == len(LONG_FIRST) and id(item) not in used]
    assert len(ordered) == len(items)
    items[:] = ordered


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's; absent where xdist is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load scheduling by work units: one test each, or a whole module that must stay together.

    (xdist's own ``--dist loadgroup`` does this with marks, but under pytest 9 its groups are
    silently ignored: it renames items through an attribute pytest no longer reads.)
    """
    if config.getoption("dist") != "load":  # -n's default; a --dist asked for by name is taken as asked
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongFirstScheduling(LoadScopeScheduling):
        grouped: frozenset[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.grouped is None:
                shared = shared_dir()
                listed = shared / GROUPS_FILE if shared is not None else None
                if listed is None or not listed.exists():
                    raise RuntimeError(f"the workers left no {GROUPS_FILE} in {shared}: tests/conftest.py writes it")
                self.grouped = frozenset(json.loads(listed.read_text()))
            module = nodeid.split("::", 1)[0]
            return module if module in self.grouped else nodeid

    return LongFirstScheduling(config, log)


@pytest.fixture(autouse=True)
def _recursion_limit() -> Iterator[None]:
    # Importing onnx2tf (a TFLite conversion) sets the limit to 2**31-1 for the whole process;
    # a later test that parses deep JSON would then overflow the C stack instead of getting a
    # RecursionError. Each test starts from the limit the session started with.
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """An anonymous Mosquitto on a free port, without persistence."""
    _require_mosquitto()
    with MosquittoProcess(None, tmp_path / "mosquitto", auth=False, persistence=False) as broker:
        yield broker


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto that enforces a password file and an ACL (initially empty)."""
    _require_mosquitto()
    with MosquittoProcess(None, tmp_path / "mosquitto-auth", auth=True, persistence=False) as broker:
        yield broker


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (see scripts/test for how to start it)")
    with migrated_postgres() as name:
        yield name


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_sqlite(tmp_path_factory.mktemp("sqlite-template") / "template.sqlite")


@pytest.fixture
def postgres_url(_postgres_template: str) -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL database of this test's own, at the newest migration."""
    with postgres_database(_postgres_template) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of this test's own at the newest migration, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_copy(request.getfixturevalue("_sqlite_template"), tmp_path / "edgefleet.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def migrated_db(database_url: str) -> Iterator[Any]:
    """A fleet-server Database on ``database_url``."""
    from fleet_server.db import Database

    database = Database(database_url)
    yield database
    database.dispose()
