"""The selector parser: what a rollout targets, and clear errors for what it cannot read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.waves import RolloutDevice, Selector, SelectorError

PI = RolloutDevice("dev-1", "rpi4-64", {"site": "a", "group": "canary", "profile": "odd"})
JETSON = RolloutDevice("dev-2", "jetson-nano", {"site": "b"})


def test_label_profile_and_group_terms_all_must_match() -> None:
    selector = Selector.parse("site=a, profile=rpi4-64,group=canary")
    assert selector.matches(PI)
    assert not selector.matches(JETSON)
    assert not Selector.parse("site=a,profile=jetson-nano").matches(PI)


def test_alternatives_match_any_value() -> None:
    selector = Selector.parse("profile=rpi4-64|jetson-nano")
    assert selector.matches(PI) and selector.matches(JETSON)


def test_star_matches_every_device() -> None:
    assert Selector.parse(" * ").matches(PI) and Selector.parse("*").matches(JETSON)
    assert str(Selector.everything()) == "*"


def test_missing_label_does_not_match() -> None:
    assert not Selector.parse("rack=r1").matches(PI)


def test_label_prefix_reaches_a_label_named_like_a_reserved_key() -> None:
    assert Selector.parse("label.profile=odd").matches(PI)
    assert not Selector.parse("profile=odd").matches(PI)
    assert str(Selector.parse("label.profile=odd")) == "label.profile=odd"


def test_canonical_form_is_sorted() -> None:
    assert str(Selector.parse("site=b|a,profile=rpi5")) == "profile=rpi5,site=a|b"


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("site", "no '='"),
    ("site=a,,profile=rpi5", "term 2"),
    ("site=a,site=b", "twice"),
    ("si te=a", "malformed key"),
    ("site=", "malformed value"),
    ("site=a b", "malformed value"),
    ("site=a|", "malformed value"),
    ("=a", "malformed key"),
])
def test_bad_selector_names_the_problem_and_the_fix(text: str, words: str) -> None:
    with pytest.raises(SelectorError) as caught:
        Selector.parse(text)
    assert words in str(caught.value)
    assert caught.value.fix
    assert isinstance(caught.value, InvalidInputError)  # the API maps it to HTTP 422


_keys = st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,10}", fullmatch=True).filter(
    lambda k: not k.startswith("label."))
_values = st.from_regex(r"[A-Za-z0-9._:/@+-]{1,12}", fullmatch=True)
_terms = st.dictionaries(_keys, st.frozensets(_values, min_size=1, max_size=3), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(_terms)
def test_canonical_form_parses_back_to_the_same_selector(terms: dict[str, frozenset[str]]) -> None:
    text = ",".join(f"{k}={'|'.join(sorted(v))}" for k, v in terms.items())
    selector = Selector.parse(text)
    assert Selector.parse(str(selector)) == selector
    assert str(Selector.parse(str(selector))) == str(selector)


@settings(max_examples=150, deadline=None)
@given(_terms, st.dictionaries(_keys, _values, max_size=5), _values)
def test_match_is_and_of_terms_and_or_of_values(terms: dict[str, frozenset[str]], labels: dict[str, str],
                                                profile: str) -> None:
    text = ",".join(f"{k}={'|'.join(sorted(v))}" for k, v in terms.items())
    device = RolloutDevice("d", profile, labels)
    expected = all((profile if k == "profile" else labels.get(k)) in v for k, v in terms.items())
    assert Selector.parse(text).matches(device) is expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_selector_error(text: str) -> None:
    try:
        selector = Selector.parse(text)
    except SelectorError as exc:
        assert exc.message
    else:
        assert Selector.parse(str(selector)) == selector
