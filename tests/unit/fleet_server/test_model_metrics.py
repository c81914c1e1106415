"""The per model version series stay bounded: registry versions only, the last versions of a model,
closed error kinds, no per-device label groups; the finished rollout states match the engine's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.telemetry import ModelRecord
from fleet_server.rollouts.machine import RolloutState
from fleet_server.telemetry.model_metrics import (
    MAX_LABEL_GROUPS,
    DriftFigure,
    ModelCounters,
    RegistryVersions,
    bounded,
)
from fleet_server.telemetry.views import FINISHED_ROLLOUT_STATES


def series(counters: ModelCounters) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(counters)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_only_registry_versions_and_the_last_few_of_a_model_have_series() -> None:
    registry = {("digits", f"1.{i}.0") for i in range(8)}
    counters = ModelCounters(lambda m, v: (m, v) in registry, versions_per_model=3)
    for i in range(8):
        counters.add([ModelRecord("digits", f"1.{i}.0", count=2)])
    counters.add([ModelRecord("digits", "1.5.0", count=1), ModelRecord("made-up", "6.6.6", count=9)])
    shown = {dict(labels)["version"]: v for (name, labels), v in series(counters).items()
             if name == "edgefleet_model_predictions_total"}
    assert shown == {"1.5.0": 3, "1.6.0": 2, "1.7.0": 2}  # 1.5.0 reported again: kept, 3 in all


def test_error_kinds_outside_the_known_set_count_as_other() -> None:
    counters = ModelCounters(lambda m, v: True)
    counters.add([ModelRecord("digits", "1.0.0", count=3, errors={"input": 1, "x" * 30: 2, "inference": 1})])
    kinds = {dict(labels)["kind"]: v for (name, labels), v in series(counters).items()
             if name == "edgefleet_model_errors_total"}
    assert kinds == {"input": 1, "inference": 1, "other": 2}


def test_a_label_that_splits_a_version_into_too_many_groups_is_left_out() -> None:
    def figure(by: str, group: str) -> DriftFigure:
        return DriftFigure("digits", "1.0.0", by, group, 0.1, 500)

    serials = [figure("label:serial", f"serial={i}") for i in range(MAX_LABEL_GROUPS + 1)]
    kept = bounded([figure("fleet", "fleet"), figure("profile", "rpi4-64"), figure("label:site", "site=a"), *serials])
    assert [f.by for f in kept] == ["fleet", "profile", "label:site"]


def test_the_registry_is_read_again_for_an_unknown_version_at_most_every_retry() -> None:
    reads: list[int] = []
    versions = [("digits", "1.0.0")]
    clock = [0.0]

    def read() -> list[tuple[str, str]]:
        reads.append(1)
        return list(versions)

    known = RegistryVersions(read, retry_s=30, monotonic=lambda: clock[0])
    assert known("digits", "1.0.0") and not known("digits", "2.0.0") and not known("digits", "2.0.0")
    assert len(reads) == 1
    versions.append(("digits", "2.0.0"))  # pushed after its devices reported
    clock[0] = 31
    assert known("digits", "2.0.0") and len(reads) == 2


def test_finished_rollout_states_are_the_engine_s() -> None:
    assert {str(s) for s in (RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.ROLLED_BACK)} \
        == FINISHED_ROLLOUT_STATES
