"""Model slots: staged beside the active one, switched by a pointer rename, never served partial."""

from __future__ import annotations

import json
import os

import pytest

from agent.errors import SlotError
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from tests.unit.agent.models import BundleMaker


def test_stage_extracts_a_verified_slot_named_by_the_bundle_hash(state: StateDir, linear_bundle: BundleMaker) -> None:
    bundle = read_bundle(linear_bundle("1.0.0"))
    store = ModelStore(state)
    slot = store.stage(bundle)
    assert slot.path == state.models_dir / "iris" / "slots" / bundle.sha256
    assert (slot.name, slot.version, slot.sha256) == ("iris", "1.0.0", bundle.sha256)
    assert slot.model_path.read_bytes() == bundle.model_bytes
    assert slot.golden()["outputs"]["label"] and store.active("iris") is None  # staged is not active
    assert store.models() == []
    assert store.stage(bundle) == slot  # staging again reuses the intact slot


def test_activate_then_switch_keeps_the_previous_for_rollback(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    one = store.stage(read_bundle(linear_bundle("1.0.0")))
    two = store.stage(read_bundle(linear_bundle("1.1.0", seed=1)))
    store.activate("iris", one)
    assert store.active("iris") == one and store.previous("iris") is None
    store.activate("iris", two)
    assert store.active("iris") == two and store.previous("iris") == one
    pointer = json.loads((state.models_dir / "iris" / "active.json").read_text())
    assert pointer == {"version": "1.1.0", "sha256": two.sha256, "slot": f"slots/{two.sha256}"}
    assert store.models() == ["iris"]
    assert store.rollback("iris") == one
    assert store.active("iris") == one and store.previous("iris") is None
    assert store.rollback("iris") is None  # the rejected version cannot come back by a second rollback
    assert store.active("iris") == one


def test_reactivating_the_active_slot_keeps_previous(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    one = store.stage(read_bundle(linear_bundle("1.0.0")))
    two = store.stage(read_bundle(linear_bundle("1.1.0", seed=1)))
    store.activate("iris", one)
    store.activate("iris", two)
    store.activate("iris", two)
    assert store.previous("iris") == one


def test_deactivate_stops_pointing_at_any_slot_and_gc_may_then_remove_them(state: StateDir,
                                                                           linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    one = store.stage(read_bundle(linear_bundle("1.0.0")))
    two = store.stage(read_bundle(linear_bundle("1.1.0", seed=1)))
    store.activate("iris", one)
    store.activate("iris", two)
    store.deactivate("iris")
    assert store.active("iris") is None and store.previous("iris") is None and store.models() == []
    assert store.rollback("iris") is None  # nothing to go back to
    assert sorted(store.gc("iris", keep=set())) == sorted([one.sha256, two.sha256])
    store.deactivate("iris")  # twice, or a model never installed: nothing to do
    store.deactivate("never-installed")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_an_altered_active_slot_never_loads(state: StateDir, linear_bundle: BundleMaker, damage: str) -> None:
    store = ModelStore(state)
    slot = store.stage(read_bundle(linear_bundle()))
    store.activate("iris", slot)
    model = slot.model_path
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        model.unlink()
    with pytest.raises(SlotError) as caught:
        store.active("iris")
    assert "model.onnx" in caught.value.message and caught.value.fix


def test_a_damaged_slot_is_extracted_again_when_staged(state: StateDir, linear_bundle: BundleMaker) -> None:
    bundle = read_bundle(linear_bundle())
    store = ModelStore(state)
    slot = store.stage(bundle)
    slot.model_path.write_bytes(b"garbage")
    assert store.stage(bundle).model_path.read_bytes() == bundle.model_bytes


def test_a_crash_mid_extract_leaves_no_slot_that_looks_valid(state: StateDir, linear_bundle: BundleMaker) -> None:
    bundle = read_bundle(linear_bundle())
    store = ModelStore(state)
    slots = state.models_dir / "iris" / "slots"
    half = slots / f".staging-{bundle.sha256[:12]}-x"
    half.mkdir(parents=True)
    (half / "model.onnx").write_bytes(bundle.model_bytes[:10])
    assert store.slot_ids("iris") == []  # the half-written directory is not a slot
    slot = store.stage(bundle)
    store.activate("iris", slot)
    assert store.gc("iris", keep=set()) == [] and not half.exists()


def test_gc_keeps_active_previous_and_what_it_is_asked_to(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    slots = [store.stage(read_bundle(linear_bundle(f"1.{i}.0", seed=i))) for i in range(4)]
    store.activate("iris", slots[0])
    store.activate("iris", slots[1])
    removed = store.gc("iris", keep={slots[2].sha256})
    assert removed == [slots[3].sha256]
    assert sorted(store.slot_ids("iris")) == sorted(s.sha256 for s in slots[:3])


def test_a_pointer_to_a_missing_or_mismatched_slot_is_refused(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    slot = store.stage(read_bundle(linear_bundle()))
    store.activate("iris", slot)
    active = state.models_dir / "iris" / "active.json"
    active.write_text(json.dumps({**slot.pointer(), "version": "9.9.9"}))
    with pytest.raises(SlotError, match="names version 9.9.9"):
        store.active("iris")
    active.write_text(json.dumps({**slot.pointer(), "sha256": "0" * 64}))
    with pytest.raises(SlotError, match="does not exist"):
        store.active("iris")
    active.write_text("{")
    with pytest.raises(SlotError, match="unreadable"):
        store.active("iris")


def test_slots_of_another_model_cannot_be_activated(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    slot = store.stage(read_bundle(linear_bundle(name="other")))
    with pytest.raises(SlotError, match="cannot activate"):
        store.activate("iris", slot)


def test_files_are_durable_names_not_temp_leftovers(state: StateDir, linear_bundle: BundleMaker) -> None:
    store = ModelStore(state)
    store.activate("iris", store.stage(read_bundle(linear_bundle())))
    leftovers = [n for _, _, files in os.walk(state.models_dir) for n in files if n.endswith(".tmp")]
    assert leftovers == []
