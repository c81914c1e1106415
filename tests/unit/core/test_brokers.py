"""Broker lists and the rotation order the agent and the server share (pure)."""

from __future__ import annotations

import pytest

from edgefleet.brokers import BrokerAddress, Rotation, join_broker_urls, parse_broker_urls
from edgefleet.errors import BrokerUrlError


def test_a_list_round_trips_through_its_comma_form() -> None:
    addresses = parse_broker_urls("mqtt://a:1883,b:1884,[::1]:1885")
    assert addresses[2] == BrokerAddress("::1", 1885, False)
    assert parse_broker_urls(join_broker_urls(addresses)) == addresses


def test_duplicates_are_dropped_and_logins_are_not_kept() -> None:
    assert parse_broker_urls("mqtt://user:secret@a:1,a:1") == (BrokerAddress("a", 1, False),)
    assert "secret" not in join_broker_urls(parse_broker_urls("mqtt://user:secret@a:1"))


@pytest.mark.parametrize("value", ["", " , ", "a:1", "http://a", "mqtt://a:0", "mqtt://a:1,ssl://b", []])
def test_bad_lists_are_refused_with_a_fix(value: str) -> None:
    with pytest.raises(BrokerUrlError) as caught:
        parse_broker_urls(value)
    assert caught.value.fix


def test_rotation_moves_on_at_each_failure_and_wraps() -> None:
    rotation = Rotation(parse_broker_urls("mqtt://a,b,c"))
    assert rotation.current.host == "a"
    assert [rotation.failed().host for _ in range(4)] == ["b", "c", "a", "b"]
    single = Rotation(parse_broker_urls("mqtt://a"))
    assert single.failed().host == "a" and single.wrapped
