"""Reconnect backoff and broker URLs (pure: no broker, no sleeping)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import LinkError
from agent.link import Backoff, parse_brokers
from edgefleet.brokers import BrokerAddress


def test_delays_grow_exponentially_to_the_cap_and_reset() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rand=lambda: 1.0)  # the top of the jitter range
    assert [backoff.next() for _ in range(7)] == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.5)


def test_jitter_spreads_a_fleet_between_half_and_full_delay() -> None:
    low = Backoff(initial=1.0, maximum=60.0, rand=lambda: 0.0)
    high = Backoff(initial=1.0, maximum=60.0, rand=lambda: 0.999)
    for _ in range(3):
        low.next(), high.next()
    assert low.next() == pytest.approx(4.0) and high.next() == pytest.approx(8.0 * (0.5 + 0.999 / 2))


@settings(deadline=None)  # shared CI cores: judge behaviour, not speed
@given(st.lists(st.floats(min_value=0, max_value=0.9999), min_size=1, max_size=80))
def test_every_delay_stays_within_bounds(draws: list[float]) -> None:
    values = iter(draws)
    backoff = Backoff(initial=0.25, maximum=30.0, rand=lambda: next(values))
    for _ in draws:
        delay = backoff.next()
        assert 0.125 <= delay < 30.0


def test_bad_backoff_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, maximum=1)


@pytest.mark.parametrize(("url", "host", "port", "tls"), [
    ("mqtt://broker.local", "broker.local", 1883, False),
    ("mqtt://10.0.0.2:11883", "10.0.0.2", 11883, False),
    ("mqtts://fleet.example.com", "fleet.example.com", 8883, True),
    ("mqtts://fleet.example.com:9999", "fleet.example.com", 9999, True),
])
def test_broker_urls(url: str, host: str, port: int, tls: bool) -> None:
    assert parse_brokers(url) == (BrokerAddress(host, port, tls),)


@pytest.mark.parametrize("url", ["http://broker", "broker:1883", "mqtt://", "mqtt://host:notaport"])
def test_bad_broker_urls_name_the_fix(url: str) -> None:
    with pytest.raises(LinkError) as caught:
        parse_brokers(url)
    assert url in caught.value.message and caught.value.fix


def test_several_brokers_in_one_string_the_later_ones_may_omit_the_scheme() -> None:
    assert parse_brokers("mqtt://a:1,b:2, mqtt://c") == (BrokerAddress("a", 1, False), BrokerAddress("b", 2, False),
                                                         BrokerAddress("c", 1883, False))
    assert parse_brokers(["mqtts://a", "b:8884"]) == (BrokerAddress("a", 8883, True), BrokerAddress("b", 8884, True))


@pytest.mark.parametrize(("urls", "named"), [
    ("mqtt://a:1,b:x", "b:x"),  # issue 13: this was "bad port" for the whole string
    ("mqtt://a:1,,b:2", "empty item"),
    ("mqtts://a,mqtt://b", "mixes TLS"),
    ("mqtt://a/path", "path"),
])
def test_a_bad_item_in_a_broker_list_is_named(urls: str, named: str) -> None:
    with pytest.raises(LinkError) as caught:
        parse_brokers(urls)
    assert named in caught.value.message and "agent.toml" in (caught.value.fix or "")


def test_the_link_uses_the_backoff_it_shares_with_the_light_devices() -> None:
    from edgefleet.backoff import Backoff as SharedBackoff

    assert Backoff is SharedBackoff  # one schedule (edgefleet.backoff), not two copies
