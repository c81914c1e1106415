"""The agent's state directory: where a device keeps who it is, what it trusts and what it runs.

The layout is pinned in docs/contracts.md ("Agent state directory"). ``StateDir`` names every
path in it and loads and saves the small documents (identity, credentials, director key,
firmware profile, TUF root). Every write goes through ``edgefleet.atomic`` so a power cut
leaves the old file or the new one; secrets are written 0600.

It deliberately does not manage model slots (``agent.slots``), the update state machine
(``agent.update_machine``) or assignments: it only names their paths.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StateError
from edgefleet.atomic import atomic_write_bytes, atomic_write_json
from edgefleet.errors import ProfileError
from edgefleet.profiles import Profile, parse_profile
from edgefleet.topics import check_device_id

DEFAULT_STATE_DIR = "/var/lib/edgefleet"
SECRET_MODE = 0o600
_NOT_ENROLLED_FIX = "enroll first: edgefleet agent enroll --server URL --token TOKEN --state-dir DIR"


def _str_field(data: Mapping[str, Any], key: str, source: str, *, required: bool = True) -> str:
    value = data.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value):
        raise StateError(f"{source}: field {key!r} is missing or not a string", fix=_NOT_ENROLLED_FIX)
    return value


@dataclass(frozen=True)
class Identity:
    """Who this device is and where its server and broker live (identity.json)."""

    device_id: str
    server_url: str
    broker_url: str
    profile: str
    labels: Mapping[str, str] = field(default_factory=dict)
    tuf_metadata_url: str = ""
    tuf_targets_url: str = ""

    def __post_init__(self) -> None:
        try:
            check_device_id(self.device_id)
        except ValueError as exc:
            raise StateError(str(exc), fix=_NOT_ENROLLED_FIX) from exc
        if not self.profile:
            raise StateError("identity names no firmware profile", fix=_NOT_ENROLLED_FIX)

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "server_url": self.server_url, "broker_url": self.broker_url,
                "profile": self.profile, "labels": dict(self.labels), "tuf_metadata_url": self.tuf_metadata_url,
                "tuf_targets_url": self.tuf_targets_url}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "identity.json") -> Identity:
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise StateError(f"{source}: 'labels' must map names to strings")
        return cls(
            device_id=_str_field(data, "device_id", source),
            server_url=_str_field(data, "server_url", source, required=False),
            broker_url=_str_field(data, "broker_url", source, required=False),
            profile=_str_field(data, "profile", source),
            labels=dict(labels),
            tuf_metadata_url=_str_field(data, "tuf_metadata_url", source, required=False),
            tuf_targets_url=_str_field(data, "tuf_targets_url", source, required=False),
        )


@dataclass(frozen=True)
class Credentials:
    """The device's secrets (credentials.json, 0600). ``repr`` never shows them."""

    mqtt_username: str
    mqtt_password: str = field(repr=False)
    api_token: str = field(repr=False, default="")

    def to_dict(self) -> dict[str, Any]:
        return {"mqtt_username": self.mqtt_username, "mqtt_password": self.mqtt_password, "api_token": self.api_token}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "credentials.json") -> Credentials:
        return cls(
            mqtt_username=_str_field(data, "mqtt_username", source),
            mqtt_password=_str_field(data, "mqtt_password", source, required=False),
            api_token=_str_field(data, "api_token", source, required=False),
        )


class StateDir:
    """One agent's state directory. Creating the object touches nothing; ``ensure()`` makes it."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    # -- paths (docs/contracts.md) ------------------------------------------------------------
    @property
    def identity_file(self) -> Path:
        return self.path / "identity.json"

    @property
    def credentials_file(self) -> Path:
        return self.path / "credentials.json"

    @property
    def director_key_file(self) -> Path:
        return self.path / "director.pub"

    @property
    def profile_file(self) -> Path:
        return self.path / "profile.toml"

    @property
    def tuf_dir(self) -> Path:
        return self.path / "tuf"

    @property
    def tuf_root_file(self) -> Path:
        return self.tuf_dir / "root.json"

    @property
    def downloads_dir(self) -> Path:
        return self.path / "downloads"

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    @property
    def update_file(self) -> Path:
        return self.path / "update.json"

    @property
    def assignment_file(self) -> Path:
        return self.path / "assignment.json"

    @property
    def outbox_file(self) -> Path:
        return self.path / "outbox.sqlite"

    @property
    def socket_path(self) -> Path:
        return self.path / "agent.sock"

    @property
    def ca_file(self) -> Path:
        """Optional CA bundle for an mqtts:// broker with a private CA."""
        return self.path / "ca.pem"

    def ensure(self) -> StateDir:
        """Create the directory tree (0700 at the top: it holds secrets)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            for sub in (self.tuf_dir, self.downloads_dir, self.models_dir):
                sub.mkdir(exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.path}: {exc.strerror}",
                             fix="run as the agent's user, or pass a writable --state-dir") from exc
        return self

    # -- documents ----------------------------------------------------------------------------
    def _read_json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StateError(f"{path} does not exist: this device has no {what}", fix=_NOT_ENROLLED_FIX) from exc
        except PermissionError as exc:
            raise StateError(f"cannot read {path}: permission denied", fix="run as the agent's user") from exc
        except ValueError as exc:
            raise StateError(f"{path} is not valid JSON ({exc})", fix="re-enroll the device") from exc

    def is_enrolled(self) -> bool:
        return self.identity_file.is_file()

    def load_identity(self) -> Identity:
        data = self._read_json(self.identity_file, "identity")
        if not isinstance(data, Mapping):
            raise StateError(f"{self.identity_file} is not a JSON object", fix="re-enroll the device")
        return Identity.from_dict(data, str(self.identity_file))

    def save_identity(self, identity: Identity) -> None:
        atomic_write_json(self.identity_file, identity.to_dict(), mode=SECRET_MODE)

    def load_credentials(self) -> Credentials | None:
        """The device's secrets, or None when it was never enrolled (a development install)."""
        if not self.credentials_file.exists():
            return None
        data = self._read_json(self.credentials_file, "credentials")
        if not isinstance(data, Mapping):
            raise StateError(f"{self.credentials_file} is not a JSON object", fix="re-enroll the device")
        return Credentials.from_dict(data, str(self.credentials_file))

    def save_credentials(self, credentials: Credentials) -> None:
        atomic_write_json(self.credentials_file, credentials.to_dict(), mode=SECRET_MODE)

    def director_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 key that signs this device's assignments."""
        try:
            text = self.director_key_file.read_text(encoding="ascii").strip()
        except FileNotFoundError as exc:
            raise StateError(f"{self.director_key_file} does not exist", fix=_NOT_ENROLLED_FIX) from exc
        return decode_director_key(text, str(self.director_key_file))

    def save_director_public_key(self, base64_key: str) -> None:
        decode_director_key(base64_key, "director_public_key")
        atomic_write_bytes(self.director_key_file, base64_key.strip().encode("ascii") + b"\n")

    def profile(self) -> Profile:
        """The firmware profile this device was enrolled with (profile.toml)."""
        try:
            text = self.profile_file.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StateError(f"{self.profile_file} does not exist: this device has no firmware profile",
                             fix=f"{_NOT_ENROLLED_FIX}; for a development install pass --profile NAME") from exc
        return _parse_stored_profile(text, self.profile_file)

    def save_profile(self, toml_text: str) -> Profile:
        """Validate and store a profile's TOML text; returns the parsed profile."""
        profile = _parse_stored_profile(toml_text, self.profile_file)
        atomic_write_bytes(self.profile_file, toml_text.encode("utf-8"))
        return profile

    def save_tuf_root(self, root: Mapping[str, Any] | bytes) -> None:
        data = root if isinstance(root, bytes) else json.dumps(root, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.tuf_root_file, data)

    def model_dir(self, name: str) -> Path:
        return self.models_dir / name


def decode_director_key(text: str, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StateError(f"{source} is not base64", fix="re-enroll the device") from exc
    if len(raw) != 32:
        raise StateError(f"{source} is {len(raw)} bytes, not a 32-byte Ed25519 public key", fix="re-enroll the device")
    return raw


def _parse_stored_profile(text: str, path: Path) -> Profile:
    # parse_profile insists that NAME.toml holds profile NAME; the state dir's copy is always
    # called profile.toml, so name the source without the .toml suffix.
    try:
        return parse_profile(text, f"{path} (enrolled profile)")
    except ProfileError as exc:
        raise StateError(str(exc), fix="re-enroll the device or fix the profile") from exc
