"""The fleets e2e tests run on, one per test: ``stack`` on Mosquitto, ``nats_stack`` on a NATS cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack
from tests.support.nats import NatsStack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A server and Mosquitto in real processes (``tests.e2e.stack.Stack``); agents are added by the test."""
    made = Stack(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def nats_stack(tmp_path: Path, postgres_url: str) -> Iterator[NatsStack]:
    """The same fleet on a three-node NATS cluster and PostgreSQL, with the auth callout on."""
    made = NatsStack(tmp_path, postgres_url)
    try:
        yield made
    finally:
        made.close()
