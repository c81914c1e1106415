"""Storing only what changed gives back the same rollout (issue 13: per-device rows).

The engine stores a rollout as its spec (once), its header and one row per device record, and
after each change writes only the records ``Rollout.changed_devices`` names, plus the header.
The stateful machine of test_rollout_properties drives a rollout through everything the engine
can feed it; here, after every step, the changed records go into an in-memory image of the
rows (through the same row mapping the store uses), and the rollout rebuilt from that image
must equal the live one, record for record. A record changed without being reported would
be lost on the next reload, and this fails.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis.stateful import invariant

from fleet_server.rollouts.machine import DeviceStatus, Rollout
from fleet_server.rollouts.store import _FIELDS, device_row, record_of
from tests.unit.fleet_server.rollout.fleet import T0, VERSION, devices, make_rollout
from tests.unit.fleet_server.rollout.test_rollout_properties import RolloutMachine


def _rows(rollout: Rollout, ids: Any) -> dict[str, tuple[Any, ...]]:
    return {d: tuple(device_row(rollout.id, rollout.devices[d])[f] for f in _FIELDS) for d in ids}


class StoredRolloutMachine(RolloutMachine):
    """The rollout machine with a row store beside it, written the way the engine writes."""

    stored: tuple[dict[str, Any], dict[str, Any], dict[str, tuple[Any, ...]]] | None = None

    def _store_changes(self) -> Rollout:
        if self.stored is None:  # create: every record gets a row
            self.stored = (self.rollout.spec_to_dict(), self.rollout.header_to_dict(),
                           _rows(self.rollout, self.rollout.devices))
        else:
            spec, _, rows = self.stored
            rows.update(_rows(self.rollout, self.rollout.changed_devices()))
            self.stored = (spec, self.rollout.header_to_dict(), rows)
        self.rollout.mark_stored()
        spec, header, rows = self.stored
        return Rollout.from_parts(spec, header, (record_of(r) for r in rows.values()))

    @invariant()
    def storing_only_the_changed_rows_gives_the_same_rollout(self) -> None:
        reloaded = self._store_changes()
        assert reloaded.to_dict() == self.rollout.to_dict()
        assert reloaded.wave_summaries() == self.rollout.wave_summaries()
        assert not self.rollout.changed_devices()

    @invariant()
    def kept_counts_agree_with_a_fresh_count(self) -> None:
        records = self.rollout.devices.values()
        fresh: dict[str, int] = {}
        for record in records:
            fresh[record.status.value] = fresh.get(record.status.value, 0) + 1
        assert self.rollout.status_counts() == dict(sorted(fresh.items()))
        assert self.rollout.assigned_count() == sum(1 for d in records if d.touched)


    @invariant()
    def the_stored_deadline_is_never_later_than_the_exact_one(self) -> None:
        # the store writes next_tick_at from the cheap bound, so a tick is never planned too late
        exact, bound = self.rollout.next_deadline(), self.rollout.next_deadline(exact=False)
        assert exact is None or (bound is not None and bound <= exact)


StoredRolloutMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_stored_rollout_matches_the_live_one = StoredRolloutMachine.TestCase


def test_a_device_event_changes_one_record_and_a_wave_start_its_members() -> None:
    rollout = make_rollout(devices(40), waves=(10.0, 100.0))
    assert not rollout.changed_devices()  # as built: nothing to store beyond what create stores
    rollout.start(T0)
    first_wave = {d for d, r in rollout.devices.items() if r.status is DeviceStatus.ASSIGNED}
    assert rollout.changed_devices() == first_wave and len(first_wave) == 4
    rollout.mark_stored()
    device = sorted(first_wave)[0]
    rollout.device_event(device, "downloaded", T0, "", VERSION)
    assert rollout.changed_devices() == {device}
