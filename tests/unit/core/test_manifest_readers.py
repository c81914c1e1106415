"""Which agent reads which manifest schema (issue 12): the table the server's assignment guard uses."""

from __future__ import annotations

import pytest

from edgefleet import __version__
from edgefleet.manifest import AGENT_READS_SINCE, SCHEMA_VERSION, SCHEMA_VERSIONS, agent_reads


def test_every_schema_this_edgefleet_writes_has_a_first_reader_and_this_agent_reads_them_all() -> None:
    assert set(AGENT_READS_SINCE) == set(SCHEMA_VERSIONS)
    assert all(agent_reads(__version__, schema) for schema in SCHEMA_VERSIONS)


@pytest.mark.parametrize(("agent_version", "schema", "reads"), [
    ("0.1.0", 2, True), ("0.2.0-rc.1", 2, True), ("1.0.0+build.7", 2, True),
    ("0.0.9", 2, False), ("0.1.0-dev", 2, False),  # a pre-release sorts before its release
    ("", 2, False), ("test", 2, False), ("0.1", 2, False),  # no version, or not a semantic one
    ("", 1, True), ("test", 1, True), ("0.0.1", 1, True),  # schema 1: every agent
    ("9.9.9", SCHEMA_VERSION + 1, False),  # a schema this edgefleet does not know
])
def test_an_agent_reads_a_schema_from_the_release_that_introduced_it(agent_version: str, schema: int,
                                                                     reads: bool) -> None:
    assert agent_reads(agent_version, schema) is reads
