"""The shared retry schedules (edgefleet.backoff): pure, so judged without a broker or a sleep."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.backoff import SUBACK_RETRY_MAX_S, refused_topics, suback_backoff

DESIRED, COMMANDS = "edgefleet/v1/devices/d/desired", "edgefleet/v1/devices/d/commands"


def test_a_refused_subscribe_is_asked_again_after_5_then_10_20_40_60_s_at_most() -> None:
    # NATS refuses after js_api_timeout (5 s): asking sooner would only add to the burst
    top = suback_backoff(rand=lambda: 1.0)
    assert [top.next() for _ in range(7)] == pytest.approx([5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0])
    top.reset()
    assert top.next() == pytest.approx(5.0)


@given(st.lists(st.floats(min_value=0, max_value=0.9999), min_size=1, max_size=40))
def test_refused_subscribe_retries_stay_between_2_5_and_60_s(draws: list[float]) -> None:
    values = iter(draws)
    backoff = suback_backoff(rand=lambda: next(values))
    for _ in draws:
        assert 2.5 <= backoff.next() < SUBACK_RETRY_MAX_S


def test_refused_topics_pairs_return_codes_with_the_subscribe() -> None:
    assert refused_topics((DESIRED, COMMANDS), [False, False]) == ()
    assert refused_topics((DESIRED, COMMANDS), [True, False]) == (DESIRED,)
    assert refused_topics((DESIRED, COMMANDS), [False, True]) == (COMMANDS,)
    assert refused_topics((DESIRED,), [True]) == (DESIRED,)


def test_a_suback_missing_return_codes_counts_as_refusing_the_rest() -> None:
    # a broker bug must leave the device asking again, never deaf
    assert refused_topics((DESIRED, COMMANDS), [False]) == (COMMANDS,)
    assert refused_topics((DESIRED, COMMANDS), []) == (DESIRED, COMMANDS)
