"""fleet_server.registry.served: a predict without ?version= answers from what the fleet serves (issue 17)."""

from __future__ import annotations

import pytest

from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.registry.served import default_version, served_counts


def test_counts_the_version_each_device_reports_for_the_model() -> None:
    reports = [{"models": {"wine": {"version": "1.1.0"}}}, {"models": {"wine": {"version": "1.1.0"}, "x": {}}},
               {"models": {"wine": {"version": "1.4.0"}}}, None, {"models": {}}, {"models": "junk"},
               {"models": {"wine": {"version": 3}}}]
    assert served_counts(reports, "wine") == {"1.1.0": 2, "1.4.0": 1}


def test_what_most_devices_serve_beats_the_newest_version() -> None:
    # The case: 1.11.0 (another profile only) and 1.4.0 (rolled back) are newer.
    published = ["1.1.0", "1.4.0", "1.11.0"]
    assert default_version("wine", served={"1.1.0": 5, "1.4.0": 1}, published=published) == "1.1.0"


def test_a_tie_goes_to_the_newer_served_version() -> None:
    assert default_version("wine", served={"1.1.0": 2, "1.4.0": 2}, published=["1.1.0", "1.4.0"]) == "1.4.0"


def test_a_served_version_that_was_yanked_is_not_chosen() -> None:
    assert default_version("wine", served={"1.4.0": 9, "1.1.0": 1}, published=["1.1.0", "1.11.0"]) == "1.1.0"


def test_with_no_fleet_the_only_version_answers() -> None:
    assert default_version("wine", served={}, published=["1.0.0"]) == "1.0.0"


def test_with_no_fleet_and_several_versions_the_caller_must_choose() -> None:
    with pytest.raises(ConflictError, match="several") as caught:
        default_version("wine", served={}, published=["1.0.0", "1.11.0", "1.2.0"])
    assert caught.value.fix == "pass ?version=, e.g. ?version=1.11.0"


def test_no_published_version_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        default_version("wine", served={"1.0.0": 3}, published=[])
