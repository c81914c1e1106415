"""Version ordering (semver precedence) and topic names (the ACL depends on them)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet import topics
from edgefleet.errors import VersionError
from edgefleet.version import ModelVersion, parse_model_ref


def test_semver_precedence() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0", "2.0.0"]
    parsed = [ModelVersion.parse(v) for v in ordered]
    assert sorted(parsed) == parsed
    assert ModelVersion.parse("1.0.0+build.5") == ModelVersion.parse("1.0.0")


@given(st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)))
def test_round_trips(parts: tuple[int, int, int]) -> None:
    text = ".".join(map(str, parts))
    assert str(ModelVersion.parse(text)) == text


@pytest.mark.parametrize("bad", ["1", "1.0", "01.0.0", "v1.0.0", "1.0.0-", ""])
def test_rejects_non_semver(bad: str) -> None:
    with pytest.raises(VersionError, match="MAJOR.MINOR.PATCH"):
        ModelVersion.parse(bad)


def test_model_ref() -> None:
    assert parse_model_ref("digits@1.2.0") == ("digits", "1.2.0")
    with pytest.raises(VersionError, match="NAME@VERSION"):
        parse_model_ref("digits")


def test_topics_and_acl() -> None:
    assert topics.desired("pi-1") == "edgefleet/v1/devices/pi-1/desired"
    assert topics.parse_device_topic("edgefleet/v1/devices/pi-1/telemetry") == ("pi-1", "telemetry")
    assert topics.server_subscription("events") == "$share/edgefleet/edgefleet/v1/devices/+/events"
    acl = topics.acl_lines("u1", "pi-1")
    assert "topic read edgefleet/v1/devices/pi-1/desired" in acl
    assert "topic write edgefleet/v1/devices/pi-1/telemetry" in acl
    assert not any("#" in line or "+" in line for line in acl)


@pytest.mark.parametrize("bad", ["+", "#", "a/b", "", "x" * 65, "-lead"])
def test_device_ids_cannot_escape_their_subtree(bad: str) -> None:
    with pytest.raises(ValueError):
        topics.desired(bad)


@pytest.mark.parametrize("bad", ["pi-1\n", "pi-1\ntopic readwrite #"])
def test_trailing_newline_cannot_sneak_into_an_acl(bad: str) -> None:
    with pytest.raises(ValueError):
        topics.acl_lines("u", bad)


def test_trailing_newline_is_not_a_version() -> None:
    with pytest.raises(VersionError):
        ModelVersion.parse("1.0.0\n")
