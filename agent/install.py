"""Installing a bundle file on this device by hand (``edgefleet agent install BUNDLE``).

For development and air-gapped devices. A local file gets the same gates as one the update
path fetched, minus TUF and the signed assignment: the bundle reader's checks (schema, every
file's sha256, size limits; the archive within the profile's storage budget), the profile
check (validated for this device's profile, an allowed format, under the profile's size
limit, checked on the manifest before any file is kept), staging into a slot, a health check
on the golden samples (agent.health), and only then the atomic switch of active.json.

It does not tell a running daemon to reload (the CLI does that over the socket) and does not
publish events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError
from agent.runtime import load_session
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.manifest import Manifest
from edgefleet.profiles import Profile


class InstallError(AgentError):
    """A bundle does not fit this device or failed its health check; nothing was activated."""


@dataclass(frozen=True)
class InstallResult:
    slot: Slot
    previous_version: str | None
    health: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.slot.name, "version": self.slot.version, "sha256": self.slot.sha256,
                "path": str(self.slot.path), "previous_version": self.previous_version, "health": self.health}


def check_fits_profile(manifest: Manifest, profile: Profile, model_bytes: int) -> None:
    """Refuse a bundle this device's profile was not validated for (pure)."""
    if profile.name not in manifest.profiles:
        raise InstallError(f"{manifest.ref} was validated for {', '.join(manifest.profiles)}, not for this device's "
                           f"profile {profile.name}", fix=f"convert the model with --profile {profile.name}")
    if manifest.format not in profile.allowed_formats:
        raise InstallError(f"{manifest.ref} is {manifest.format}, which profile {profile.name} does not allow",
                           fix=f"convert it to one of: {', '.join(profile.allowed_formats)}")
    if model_bytes > profile.max_model_bytes:
        raise InstallError(f"{manifest.ref}'s model is {model_bytes} bytes, over profile {profile.name}'s "
                           f"limit of {profile.max_model_bytes}", fix="quantize or shrink the model")


def install_bundle(state: StateDir, source: str | os.PathLike[str] | bytes, profile: Profile, *,
                   latency_runs: int = 20) -> InstallResult:
    """Check, stage, health-check and activate a bundle; returns what is now active."""
    from agent.health import check_health  # numpy-only, but keep `agent install --help` instant

    # The profile is checked on the manifest before any file is kept (and the archive may not
    # exceed the device's storage budget), so a model too big for this device is never loaded.
    bundle = read_bundle(source, max_bytes=profile.storage_budget_bytes,
                         accept=lambda m: check_fits_profile(m, profile, m.files[m.model_file].size))
    manifest = bundle.manifest
    store = ModelStore(state.ensure())
    slot = store.stage(bundle)
    session = load_session(slot, profile)
    try:
        report = check_health(session, manifest, slot.golden(), latency_budget_ms=profile.latency_budget_ms,
                              latency_runs=latency_runs)
    finally:
        session.close()
    if not report.passed:
        # Drop only this slot (gc keeps the active and previous ones whatever we pass).
        store.gc(manifest.name, keep=set(store.slot_ids(manifest.name)) - {slot.sha256})
        raise InstallError(f"{manifest.ref} failed its health check: {report.message}",
                           fix="rebuild the bundle for this profile; nothing was activated")
    current = store.active(manifest.name, verify=False)
    store.activate(manifest.name, slot)
    return InstallResult(slot, current.version if current and current.sha256 != slot.sha256 else None,
                         report.to_dict())
