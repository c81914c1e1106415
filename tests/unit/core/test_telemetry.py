"""The telemetry batch contract: exact round trips, refusals that name the problem, and its size."""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet import telemetry, topics
from edgefleet.errors import EdgefleetError
from edgefleet.telemetry import (
    FeatureReference,
    Feedback,
    Latency,
    ModelRecord,
    ReferenceProfile,
    Resource,
    ShadowRecord,
    TelemetryBatch,
    TelemetryError,
    decode,
    encode,
)

counts = st.integers(0, 10**9)
ms = st.floats(0, 1e6, allow_nan=False)


@st.composite
def records(draw: st.DrawFn, name: str) -> ModelRecord:
    lat = sorted(draw(st.lists(ms, min_size=3, max_size=3)))
    labels = draw(counts)
    buckets = draw(st.lists(counts, max_size=len(telemetry.LATENCY_BUCKETS_S) + 1))
    count = sum(buckets) if buckets and draw(st.booleans()) else draw(counts)
    return ModelRecord(
        model=name, version=draw(st.sampled_from(["1.0.0", "2.1.0-rc.1", "0.0.1+b7"])), count=count,
        latency_buckets=tuple(buckets) if sum(buckets) == count else (),
        errors=draw(st.dictionaries(st.sampled_from(["inference", "input", "timeout"]), counts)),
        latency=draw(st.none() | st.just(Latency(*lat))),
        outputs=tuple(draw(st.lists(counts, max_size=12))),
        drift=tuple(tuple(f) for f in draw(st.lists(st.lists(counts, min_size=1, max_size=10), max_size=8))),
        feedback=Feedback(labels, draw(st.integers(0, labels))),
    )


@st.composite
def shadows(draw: st.DrawFn, name: str) -> ShadowRecord:
    compared = draw(st.integers(0, 10**6))
    def buckets() -> tuple[int, ...]:
        if not compared or not draw(st.booleans()):
            return ()
        cut = sorted(draw(st.lists(st.integers(0, compared), min_size=1, max_size=len(telemetry.LATENCY_BUCKETS_S))))
        return tuple(b - a for a, b in zip([0, *cut], [*cut, compared], strict=True))
    return ShadowRecord(
        model=name, version=draw(st.sampled_from(["1.1.0", "2.0.0-rc.1"])), serving="1.0.0", compared=compared,
        agreed=draw(st.integers(0, compared)), skipped=draw(counts), errors=draw(counts),
        rel_error_sum=draw(st.none() | st.floats(0, 1e6)), serving_buckets=buckets(), candidate_buckets=buckets(),
    )


@st.composite
def batches(draw: st.DrawFn) -> TelemetryBatch:
    names = draw(st.lists(st.sampled_from(["digits", "iris", "kws-2"]), unique=True, max_size=3))
    return TelemetryBatch(
        device_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)),
        seq=draw(counts), ts=draw(st.floats(0, 4e9)), interval_s=draw(st.floats(0.5, 3600)),
        dropped=draw(counts),
        resource=Resource(draw(st.none() | st.floats(0, 800)), draw(st.none() | counts),
                          draw(st.none() | st.floats(-40, 125))),
        models=tuple(draw(records(n)) for n in names),
        shadow=tuple(draw(shadows(n)) for n in draw(st.lists(st.sampled_from(["digits", "iris"]), unique=True,
                                                             max_size=2))),
    )


@settings(max_examples=150, deadline=None)
@given(batches())
def test_any_valid_batch_survives_the_wire_exactly(batch: TelemetryBatch) -> None:
    data = encode(batch)
    assert data[0] == telemetry.WIRE_VERSION
    assert decode(data) == batch


def _wire(document: object, version: int = telemetry.WIRE_VERSION) -> bytes:
    return bytes([version]) + zlib.compress(json.dumps(document).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(list("dstixrmnvcelofb")), inner, max_size=6),
    max_leaves=30,
)


near_batches = st.fixed_dictionaries(
    {"d": st.just("dev-1"), "s": st.just(1), "t": st.just(1.0), "i": st.just(60)},
    optional={"x": json_values, "r": json_values,
              "m": st.lists(st.fixed_dictionaries({"n": st.just("digits"), "v": st.just("1.0.0"), "c": st.just(1)},
                                                  optional={k: json_values for k in "elofb"}), max_size=2),
              "sh": st.lists(st.fixed_dictionaries({"n": st.just("digits"), "v": st.just("1.1.0"), "a": st.just("1.0.0"),
                                                   "c": st.just(2), "g": st.just(1)},
                                                  optional={k: json_values for k in ("k", "e", "r", "hs", "hc")}),
                             max_size=2)},
)


@settings(max_examples=300, deadline=None)
@given(json_values | near_batches)
def test_any_json_document_decodes_to_a_batch_or_a_telemetry_error(document: object) -> None:
    with contextlib.suppress(TelemetryError):
        decode(_wire(document))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_a_batch_or_a_telemetry_error(data: bytes) -> None:
    # Any other exception type (ValueError, KeyError, UnicodeDecodeError) fails the test.
    with contextlib.suppress(TelemetryError):
        decode(data)




GOOD = {"d": "dev-1", "s": 1, "t": 1000.0, "i": 60}
SH = {"n": "digits", "v": "1.1.0", "a": "1.0.0", "c": 10, "g": 9}


@pytest.mark.parametrize(("document", "problem"), [
    ({**GOOD, "s": -1}, "seq must be a non-negative integer"),
    ({**GOOD, "s": True}, "seq must be a non-negative integer"),
    ({**GOOD, "d": "dev/+/#"}, "device id"),
    ({**GOOD, "d": "dev-1\n"}, "device id"),
    ({**GOOD, "zz": 1}, "unknown key(s) zz"),
    ({k: v for k, v in GOOD.items() if k != "t"}, "lacks key 't'"),
    ({**GOOD, "i": 0}, "interval_s must be positive"),
    ({**GOOD, "m": [{"n": "digits", "v": "1.0", "c": 1}]}, "not a semantic version"),
    ({**GOOD, "m": [{"n": "digits", "v": "1.0.0", "c": 1, "l": [3, 2, 1]}]}, "p50 <= p95 <= p99"),
    ({**GOOD, "m": [{"n": "digits", "v": "1.0.0", "c": 1, "b": [1, 2]}]}, "exceeds labels seen"),
    ({**GOOD, "m": [{"n": "digits", "v": "1.0.0", "c": 1, "f": [[1, -2]]}]}, "drift counts"),
    ({**GOOD, "m": [{"n": "a", "v": "1.0.0", "c": 1}, {"n": "a", "v": "1.0.0", "c": 2}]}, "same model version twice"),
    ({**GOOD, "r": [1, 2]}, "resource"),
    ({**GOOD, "sh": {}}, "shadow records ('sh') must be a list"),
    ({**GOOD, "sh": [[1]]}, "shadow record is not a JSON object"),
    ({**GOOD, "sh": [{**SH, "zz": 1}]}, "unknown key(s) zz"),
    ({**GOOD, "sh": [{k: v for k, v in SH.items() if k != "a"}]}, "lacks key 'a'"),
    ({**GOOD, "sh": [{**SH, "a": 1}]}, "must be strings"),
    ({**GOOD, "sh": [{**SH, "v": "1.0.0"}]}, "is the serving version"),
    ({**GOOD, "sh": [{**SH, "v": "1.1"}]}, "not a semantic version"),
    ({**GOOD, "sh": [{**SH, "g": 11}]}, "agreed (11) exceeds compared (10)"),
    ({**GOOD, "sh": [{**SH, "k": -1}]}, "skipped must be a non-negative integer"),
    ({**GOOD, "sh": [{**SH, "e": 1.5}]}, "errors must be a non-negative integer"),
    ({**GOOD, "sh": [{**SH, "r": -0.5}]}, "rel_error_sum must not be negative"),
    ({**GOOD, "sh": [{**SH, "r": "x"}]}, "rel_error_sum must be a finite number"),
    ({**GOOD, "sh": [{**SH, "hs": [1, 2]}]}, "add up to 3, not to compared 10"),
    ({**GOOD, "sh": [{**SH, "hc": [1] * 18}]}, "over the 17 buckets"),
    ({**GOOD, "sh": [SH, SH]}, "same candidate twice"),
    ([1, 2], "must be a JSON object"),
])
def test_schema_violations_are_refused_with_the_reason(document: object, problem: str) -> None:
    with pytest.raises(TelemetryError) as caught:
        decode(_wire(document))
    assert problem in str(caught.value)
    assert isinstance(caught.value, EdgefleetError) and caught.value.fix


def test_a_batch_for_another_device_than_its_topic_is_refused() -> None:
    data = encode(TelemetryBatch("dev-2", 1, 1.0))
    assert decode(data, device_id="dev-2").device_id == "dev-2"
    with pytest.raises(TelemetryError, match="naming device 'dev-2' arrived on the topic of 'dev-1'"):
        decode(data, device_id="dev-1")


def test_unknown_wire_version_names_the_upgrade() -> None:
    with pytest.raises(TelemetryError, match="wire version 2 is not supported.*upgrade"):
        decode(_wire(GOOD, version=2))


def test_truncated_and_non_zlib_payloads_are_refused() -> None:
    data = encode(TelemetryBatch("dev-1", 1, 1.0))
    with pytest.raises(TelemetryError, match="truncated"):
        decode(data[:-4])
    with pytest.raises(TelemetryError, match="not valid zlib"):
        decode(b"\x01not zlib at all")


def test_a_compressed_bomb_is_refused_before_it_inflates() -> None:
    bomb = bytes([telemetry.WIRE_VERSION]) + zlib.compress(b" " * (telemetry.MAX_BODY_BYTES + 10), 9)
    assert len(bomb) < 2000
    with pytest.raises(TelemetryError, match="inflates past"):
        decode(bomb)


def test_numpy_counts_from_the_agent_become_plain_ints() -> None:
    record = ModelRecord("digits", "1.0.0", count=np.int64(3), outputs=tuple(np.array([1, 2], dtype=np.int64)))
    assert type(record.count) is int and all(type(v) is int for v in record.outputs)
    assert json.loads(zlib.decompress(encode(TelemetryBatch("d", 1, 1.0, models=(record,)))[1:]))["m"][0]["o"] == [1, 2]


# ---- PSI and the reference profile --------------------------------------------------------

def test_psi_is_zero_for_the_same_shape_and_grows_with_the_shift() -> None:
    ref = [100, 200, 300, 400]
    assert telemetry.psi([10, 20, 30, 40], ref) == pytest.approx(0.0)
    small, big = telemetry.psi([12, 20, 30, 38], ref), telemetry.psi([40, 30, 20, 10], ref)
    assert 0 < small < big
    # By hand: shares a = (.4,.3,.2,.1), e = (.1,.2,.3,.4).
    expected = sum((a - e) * math.log(a / e) for a, e in zip((.4, .3, .2, .1), (.1, .2, .3, .4), strict=True))
    assert big == pytest.approx(expected)


def test_psi_floors_empty_bins_instead_of_dividing_by_zero() -> None:
    value = telemetry.psi([0, 0, 10], [5, 5, 0])
    assert math.isfinite(value) and value > 1
    assert telemetry.psi([0, 0, 0], [1, 2, 3]) == 0.0  # no traffic is no evidence of drift


def test_psi_refuses_different_bins() -> None:
    with pytest.raises(TelemetryError, match="same bins"):
        telemetry.psi([1, 2], [1, 2, 3])


@pytest.mark.parametrize(("value", "name"), [(0.0, "stable"), (0.0999, "stable"), (0.1, "moderate"),
                                             (0.25, "moderate"), (0.2501, "drift")])
def test_bands(value: float, name: str) -> None:
    assert telemetry.band(value) == name


def test_reference_profile_reads_the_converter_shape_and_refuses_broken_ones() -> None:
    ref = ReferenceProfile.from_dict({
        "rows": 10, "features": [{"name": "a", "edges": [0, 1, 2], "counts": [4, 6]}],
        "outputs": {"kind": "classes", "labels": [0, 1], "counts": [5, 5]}})
    assert ref.feature_names == ("a",) and ref.features[0].bins == 2 and ref.output_labels == (0, 1)
    with pytest.raises(TelemetryError, match="k bins need k\\+1 edges"):
        ReferenceProfile.from_dict({"features": [{"name": "a", "edges": [0, 1], "counts": [1, 2]}]})
    with pytest.raises(TelemetryError, match="finite and sorted"):
        ReferenceProfile.from_dict({"features": [{"name": "a", "edges": [2, 1], "counts": [1]}]})
    with pytest.raises(TelemetryError, match="2 output labels but 1 counts"):
        ReferenceProfile.from_dict({"outputs": {"kind": "classes", "labels": [0, 1], "counts": [1]}})


# ---- size: what one device costs a cellular plan ------------------------------------------

FEATURES, CLASSES, BINS = 64, 10, 10
BATCHES_PER_DAY = int(86_400 / telemetry.DEFAULT_INTERVAL_S)


def mqtt_publish_overhead(topic: str) -> int:
    """Bytes MQTT 3.1.1 adds to one QoS 1 PUBLISH and its PUBACK (fixed header with a 2-byte
    remaining length, topic length and name, packet id; PUBACK is 4 bytes)."""
    return 3 + 2 + len(topic.encode()) + 2 + 4


def day_of_telemetry(requests_per_s: float, *, drift_every: int = telemetry.DEFAULT_DRIFT_EVERY) -> tuple[int, int]:
    """(payload bytes, payload + MQTT bytes) for one device with one 64-feature, 10-class model
    reporting every DEFAULT_INTERVAL_S for a day, drift counts on every ``drift_every``-th batch."""
    rng = np.random.default_rng(2026)
    device = "dev-3f2a9c1b7e"
    topic = topics.telemetry(device)
    payload = 0
    pending = np.zeros((FEATURES, BINS), dtype=np.int64)
    for i in range(BATCHES_PER_DAY):
        n = int(rng.poisson(requests_per_s * telemetry.DEFAULT_INTERVAL_S))
        pending += rng.multinomial(n, [1 / BINS] * BINS, size=FEATURES)
        drift: tuple[tuple[int, ...], ...] = ()
        if (i + 1) % drift_every == 0:
            drift, pending = tuple(tuple(int(c) for c in row) for row in pending), np.zeros_like(pending)
        p50, p95, p99 = sorted(float(v) for v in rng.gamma(2.0, 0.6, 3))
        # Latency buckets as a Pi answers: 0.5-5 ms, spread over the 4 buckets between.
        buckets = (0, 0, 0, *(int(c) for c in rng.multinomial(n, [0.1, 0.5, 0.3, 0.1])))
        record = ModelRecord("digits", "1.0.0", count=n, latency_buckets=buckets, errors={"inference": 1} if i % 97 == 0 else {},
                             latency=Latency(p50, p95, p99) if n else None,
                             outputs=tuple(int(c) for c in rng.multinomial(n, [1 / CLASSES] * CLASSES)),
                             drift=drift, feedback=Feedback(2, 2) if i % 5 == 0 else Feedback())
        batch = TelemetryBatch(device, i + 1, 1_764_000_000.0 + 60 * i, dropped=0,
                               resource=Resource(float(rng.uniform(1, 20)), 48_000_000 + int(rng.integers(0, 1 << 20)),
                                                 float(rng.uniform(45, 60))),
                               models=(record,))
        payload += len(encode(batch))
    return payload, payload + BATCHES_PER_DAY * mqtt_publish_overhead(topic)


def test_one_device_one_model_sends_about_a_megabyte_a_day_or_a_third_with_sparser_drift() -> None:
    # Figures in docs/telemetry.md ("Size"); a change to the wire form that costs bytes shows here.
    # The default sends feature counts on every batch, so the server's drift is at most one
    # interval behind the device (issue 17).
    assert telemetry.DEFAULT_DRIFT_EVERY == 1
    payload, on_the_wire = day_of_telemetry(1.0)
    assert payload < 1_000_000
    assert on_the_wire < 1_100_000  # MQTT framing included
    # A metered link can send them on every 10th batch: about a third of the bytes.
    sparse, sparse_wire = day_of_telemetry(1.0, drift_every=10)
    assert sparse < 350_000 and sparse_wire < 450_000
    assert payload > 2.5 * sparse
    _, busy_sparse_wire = day_of_telemetry(10.0, drift_every=10)
    assert busy_sparse_wire < 500_000


# ---- categorical features (issue 12: string columns) ----------------------------------------

def test_a_categorical_feature_has_one_count_per_category_and_one_for_unseen() -> None:
    ref = ReferenceProfile.from_dict({
        "rows": 10,
        "features": [{"name": "alcohol", "edges": [0, 1, 2], "counts": [4, 6]},
                     {"name": "region", "kind": "categories", "categories": ["east", "north", "west"],
                      "counts": [3, 3, 4, 0]}],
        "outputs": {"kind": "classes", "labels": [0, 1], "counts": [5, 5]}})
    numeric, region = ref.features
    assert numeric.kind == "bins" and region.kind == "categories"  # kind defaults to bins: older bundles read
    assert region.bins == 4 and region.edges == () and region.bin_names == ("east", "north", "west", "(unseen)")
    assert ref.feature_names == ("alcohol", "region")
    assert region.to_dict() == {"name": "region", "kind": "categories", "categories": ["east", "north", "west"],
                                "counts": [3, 3, 4, 0]}
    assert FeatureReference.from_dict(numeric.to_dict()) == numeric


@pytest.mark.parametrize(("feature", "problem"), [
    ({"name": "r", "kind": "categories", "categories": ["a", "b"], "counts": [1, 2]}, "k\\+1 counts, the last for unseen"),
    ({"name": "r", "kind": "categories", "categories": ["a", "a"], "counts": [1, 2, 0]}, "each listed once"),
    ({"name": "r", "kind": "categories", "categories": [], "counts": [0]}, "at least one category"),
    ({"name": "r", "kind": "categories", "categories": ["a", 1], "counts": [1, 2, 0]}, "not a string"),
    ({"name": "r", "kind": "categories", "categories": "ab", "counts": [1, 2, 0]}, "not a list"),
    ({"name": "r", "kind": "histogram", "edges": [0, 1], "counts": [1]}, "kind 'histogram'"),
    ({"name": "r", "kind": "categories", "categories": ["a"], "counts": [-1, 0]}, "negative count"),
])
def test_a_broken_categorical_feature_is_refused_with_the_reason(feature: dict[str, Any], problem: str) -> None:
    with pytest.raises(TelemetryError, match=problem) as caught:
        ReferenceProfile.from_dict({"features": [feature]})
    assert caught.value.fix == "rebuild the bundle with `edgefleet convert`"


def test_categories_on_a_bins_feature_are_refused() -> None:
    with pytest.raises(TelemetryError, match="lists categories but is of kind bins"):
        FeatureReference("a", (0.0, 1.0), (1,), "bins", ("x",))
    with pytest.raises(TelemetryError, match="categories and edges"):
        FeatureReference("a", (0.0, 1.0), (1, 0), "categories", ("x",))


def test_latency_buckets_add_up_to_the_count_travel_trimmed_and_are_bounded() -> None:
    record = ModelRecord("digits", "1.0.0", count=5, latency_buckets=(0, 2, 3, 0, 0))
    assert record.latency_buckets == (0, 2, 3)  # trailing empty buckets do not travel
    batch = TelemetryBatch("dev-1", 1, 100.0, models=(record,))
    assert decode(encode(batch)).models[0].latency_buckets == (0, 2, 3)
    with pytest.raises(TelemetryError, match="add up to 4, not to the record's count 5"):
        ModelRecord("digits", "1.0.0", count=5, latency_buckets=(1, 3))
    with pytest.raises(TelemetryError, match="over the 17 buckets"):
        ModelRecord("digits", "1.0.0", count=18, latency_buckets=(1,) * 18)
    with pytest.raises(TelemetryError, match="latency bucket counts"):
        ModelRecord("digits", "1.0.0", count=1, latency_buckets=(-1, 2))


@pytest.mark.parametrize(("seconds", "bucket"), [(0.0, 0), (0.0001, 0), (0.00011, 1), (1.0, 12), (10.0, 15),
                                                 (10.5, 16), (float("nan"), 16)])
def test_a_latency_falls_in_the_bucket_whose_upper_bound_holds_it(seconds: float, bucket: int) -> None:
    assert telemetry.latency_bucket(seconds) == bucket


def test_shadow_records_travel_compactly_and_add_up_across_devices() -> None:
    one = ShadowRecord("digits", "1.1.0", "1.0.0", compared=4, agreed=3, skipped=2, errors=1,
                       serving_buckets=(0, 4), candidate_buckets=(0, 0, 4))
    two = ShadowRecord("digits", "1.1.0", "1.0.0", compared=6, agreed=6, serving_buckets=(0, 6), candidate_buckets=(0, 6))
    batch = TelemetryBatch("dev-1", 1, 1000.0, shadow=(one,))
    assert decode(encode(batch)) == batch
    assert telemetry.to_wire_dict(batch)["sh"] == [{"n": "digits", "v": "1.1.0", "a": "1.0.0", "c": 4, "g": 3, "k": 2,
                                                    "e": 1, "hs": [0, 4], "hc": [0, 0, 4]}]
    total = telemetry.shadow_figures([one, two])
    assert (total.compared, total.agreed, total.skipped, total.errors) == (10, 9, 2, 1)
    assert total.serving_buckets == (0, 10) and total.candidate_buckets == (0, 6, 4)
    assert total.agreement == 0.9 and total.mean_rel_error is None
    with pytest.raises(TelemetryError, match="different models or versions"):
        telemetry.shadow_figures([one, ShadowRecord("digits", "1.2.0", "1.0.0")])
    regressor = ShadowRecord("price", "2.0.0", "1.0.0", compared=4, agreed=4, rel_error_sum=0.2)
    assert regressor.mean_rel_error == pytest.approx(0.05)


def test_a_percentile_is_read_off_the_buckets_as_the_upper_bound_of_its_bucket() -> None:
    bounds = telemetry.LATENCY_BUCKETS_S
    assert telemetry.bucket_quantile((), 0.5) is None
    assert telemetry.bucket_quantile((0, 0, 10), 0.99) == bounds[2]
    assert telemetry.bucket_quantile((0, 98, 0, 2), 0.5) == bounds[1]
    assert telemetry.bucket_quantile((0, 98, 0, 2), 0.99) == bounds[3]
    assert telemetry.bucket_quantile((1,) + (0,) * len(bounds) + (0,), 0.5) == bounds[0]
    assert telemetry.bucket_quantile((0,) * len(bounds) + (3,), 0.5) == math.inf
    # interpolated: inside the bucket, and the last bound (not inf) in the overflow bucket
    assert telemetry.bucket_quantile((0,) * len(bounds) + (3,), 0.5, interpolate=True) == bounds[-1]
    assert telemetry.bucket_quantile((), 0.5, interpolate=True) is None


@given(st.lists(st.integers(0, 50), min_size=1, max_size=len(telemetry.LATENCY_BUCKETS_S) + 1),
       st.floats(0.01, 1.0))
def test_an_interpolated_percentile_lies_inside_the_bucket_that_holds_it(buckets: list[int], q: float) -> None:
    value = telemetry.bucket_quantile(buckets, q, interpolate=True)
    if not sum(buckets):
        assert value is None
        return
    assert value is not None and 0 <= value <= telemetry.LATENCY_BUCKETS_S[-1]
    # monotone in q
    lower = telemetry.bucket_quantile(buckets, q / 2, interpolate=True)
    assert lower is not None and lower <= value + 1e-12


def test_a_percentile_interpolates_so_a_ratio_of_1_5_can_be_told_from_2() -> None:
    # all in the 1-2.5 ms bucket: median at 1.75 ms, not the bound 2.5 ms
    assert telemetry.bucket_quantile((0, 0, 0, 0, 4), 0.5, interpolate=True) == pytest.approx(0.00175)
