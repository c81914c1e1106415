"""Model slots on disk: staged and active bundles side by side, switched by one atomic rename.

    models/NAME/slots/SHA256/   an extracted bundle (manifest.json, model.*, golden.json, reference.json)
    models/NAME/active.json     {"version", "sha256", "slot"}: what serves
    models/NAME/previous.json   the pointer before the last switch (the rollback target)

A slot is extracted into a hidden temporary directory and renamed into place, so a crash
never leaves a half slot under its final name. The switch is the rename of active.json
(written with fsync, then the directory fsynced). Loading a slot re-checks every file's
sha256 against its manifest: a partial or altered slot raises ``SlotError`` and never serves.

``deactivate`` removes both pointers when a first install is rolled back and nothing is left
to serve. This module does not load runtimes, run health checks or decide when to switch: that is
``agent.runtime``, the install command and the update path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import SlotError
from agent.state import StateDir
from edgefleet.atomic import atomic_write_json, fsync_dir
from edgefleet.bundle import MANIFEST_NAME, Bundle
from edgefleet.errors import EdgefleetError
from edgefleet.manifest import Manifest
from edgefleet.version import check_model_name

ACTIVE = "active.json"
PREVIOUS = "previous.json"
_TMP_PREFIX = ".staging-"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Slot:
    """One extracted bundle. ``sha256`` is the bundle archive's sha256 (the slot's directory name)."""

    name: str
    version: str
    sha256: str
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    def golden(self) -> dict[str, Any]:
        name = self.manifest.golden_file
        if name.endswith(".npz"):  # tensor inputs (edgefleet.golden)
            from edgefleet.golden import read_golden

            try:
                return read_golden(name, (self.path / name).read_bytes())
            except (OSError, EdgefleetError) as exc:
                raise SlotError(f"slot {self.path}: {name} is unreadable ({exc})") from exc
        return self._json(name)

    def reference(self) -> dict[str, Any]:
        return self._json(self.manifest.reference_file)

    def _json(self, name: str) -> dict[str, Any]:
        try:
            value = json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SlotError(f"slot {self.path}: {name} is unreadable ({exc})") from exc
        if not isinstance(value, dict):
            raise SlotError(f"slot {self.path}: {name} is not a JSON object")
        return value

    def verify(self) -> None:
        """Re-check every file listed by the manifest against its sha256 and size."""
        for name, entry in self.manifest.files.items():
            path = self.path / name
            try:
                size = path.stat().st_size
                digest = _file_sha256(path) if size == entry.size else ""
            except OSError as exc:
                raise SlotError(f"slot {self.path}: {name} is missing ({exc.strerror})",
                                fix="reinstall the model (edgefleet agent install BUNDLE) or let the update path fetch it again") from exc
            if size != entry.size or digest != entry.sha256:
                raise SlotError(f"slot {self.path}: {name} does not match its sha256 in the manifest (partial or altered)",
                                fix="reinstall the model; the slot must not serve")

    @classmethod
    def open(cls, path: Path, *, sha256: str | None = None, verify: bool = True) -> Slot:
        """Read a slot directory's manifest and (by default) verify every file."""
        try:
            document = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
            manifest = Manifest.from_dict(document)
        except FileNotFoundError as exc:
            raise SlotError(f"slot {path} does not exist or has no manifest",
                            fix="reinstall the model (edgefleet agent install BUNDLE)") from exc
        except (OSError, ValueError, EdgefleetError) as exc:
            raise SlotError(f"slot {path}: manifest.json is unreadable ({exc})", fix="reinstall the model") from exc
        slot = cls(manifest.name, manifest.version, sha256 or path.name, path, manifest)
        if verify:
            slot.verify()
        return slot

    def pointer(self) -> dict[str, str]:
        return {"version": self.version, "sha256": self.sha256, "slot": f"slots/{self.sha256}"}


class ModelStore:
    """The models of one state directory: staging, the active/previous pointers, rollback, gc."""

    def __init__(self, state_dir: StateDir) -> None:
        self.state_dir = state_dir

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)
        return self.state_dir.models_dir / name

    def _slots_dir(self, name: str) -> Path:
        return self._model_dir(name) / "slots"

    def stage(self, bundle: Bundle) -> Slot:
        """Extract a checked bundle into its slot; an existing, intact slot is reused."""
        name = bundle.manifest.name
        slots = self._slots_dir(name)
        final = slots / bundle.sha256
        if final.is_dir():
            try:
                return Slot.open(final, sha256=bundle.sha256)
            except SlotError:
                shutil.rmtree(final, ignore_errors=True)  # damaged: extract it again below
        slots.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{bundle.sha256[:12]}-", dir=slots))
        try:
            bundle.extract(tmp)  # every file fsynced by edgefleet.atomic
            fsync_dir(tmp)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SlotError(f"cannot stage {bundle.manifest.ref} into {final}: {exc.strerror}",
                            fix="check free disk space and the state directory's permissions") from exc
        fsync_dir(slots)
        return Slot.open(final, sha256=bundle.sha256)

    def slot(self, name: str, sha256: str, *, verify: bool = True) -> Slot:
        slot = Slot.open(self._slots_dir(name) / sha256, sha256=sha256, verify=verify)
        if slot.name != name:
            raise SlotError(f"slot {slot.path} holds model {slot.name!r}, not {name!r}", fix="reinstall the model")
        return slot

    def _read_pointer(self, name: str, which: str) -> Mapping[str, Any] | None:
        path = self._model_dir(name) / which
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SlotError(f"{path} is unreadable ({exc})", fix="reinstall the model") from exc
        if not isinstance(data, Mapping) or not isinstance(data.get("sha256"), str):
            raise SlotError(f"{path} is not a slot pointer", fix="reinstall the model")
        return data

    def _pointed(self, name: str, which: str, verify: bool) -> Slot | None:
        pointer = self._read_pointer(name, which)
        if pointer is None:
            return None
        slot = self.slot(name, str(pointer["sha256"]), verify=verify)
        if slot.version != pointer.get("version"):
            raise SlotError(f"{name}/{which} names version {pointer.get('version')} but its slot holds {slot.version}",
                            fix="reinstall the model")
        return slot

    def active(self, name: str, *, verify: bool = True) -> Slot | None:
        """The slot that serves ``name``, verified; None when nothing was ever activated."""
        return self._pointed(name, ACTIVE, verify)

    def previous(self, name: str, *, verify: bool = True) -> Slot | None:
        return self._pointed(name, PREVIOUS, verify)

    def activate(self, name: str, slot: Slot) -> None:
        """Make ``slot`` active. previous.json := the old active first, then the switch."""
        if slot.name != name:
            raise SlotError(f"cannot activate a {slot.name!r} slot as model {name!r}")
        directory = self._model_dir(name)
        current = self._read_pointer(name, ACTIVE)
        if current is not None and current.get("sha256") != slot.sha256:
            atomic_write_json(directory / PREVIOUS, dict(current))
        # The rename inside atomic_write_json is the switch: readers see old or new, never neither.
        atomic_write_json(directory / ACTIVE, slot.pointer())

    def rollback(self, name: str) -> Slot | None:
        """Point active back at previous and forget previous; returns the slot now active.

        previous.json is removed after the switch so a second rollback cannot bring the
        rejected version back. Returns None (and changes nothing) when there is no previous.
        """
        previous = self.previous(name)
        if previous is None:
            return None
        directory = self._model_dir(name)
        atomic_write_json(directory / ACTIVE, previous.pointer())
        with contextlib.suppress(FileNotFoundError):
            (directory / PREVIOUS).unlink()
        fsync_dir(directory)
        return previous

    def deactivate(self, name: str) -> None:
        """Stop pointing at any slot of ``name`` (a first install rolled back: nothing to go back to).

        The slots stay on disk for ``gc``; ``models()`` no longer lists ``name``. A crash between
        the two removals leaves at most a previous.json, which only a rollback reads, and a
        rollback of a model with no active slot has nothing to undo.
        """
        directory = self._model_dir(name)
        for which in (ACTIVE, PREVIOUS):
            with contextlib.suppress(FileNotFoundError):
                (directory / which).unlink()
        if directory.is_dir():
            fsync_dir(directory)

    def models(self) -> list[str]:
        """Names of the models that have an active slot."""
        root = self.state_dir.models_dir
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / ACTIVE).is_file())

    def slot_ids(self, name: str) -> list[str]:
        slots = self._slots_dir(name)
        if not slots.is_dir():
            return []
        return sorted(p.name for p in slots.iterdir() if p.is_dir() and not p.name.startswith("."))

    def gc(self, name: str, keep: set[str]) -> list[str]:
        """Delete slots not in ``keep``; the active and previous slots are always kept.

        Leftover staging directories (a crash mid-extract) are removed too. Returns the
        sha256s of the slots deleted.
        """
        slots = self._slots_dir(name)
        if not slots.is_dir():
            return []
        protected = set(keep)
        for which in (ACTIVE, PREVIOUS):
            pointer = self._read_pointer(name, which)
            if pointer is not None:
                protected.add(str(pointer["sha256"]))
        removed: list[str] = []
        for path in slots.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and path.name not in protected:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        fsync_dir(slots)
        return sorted(removed)
