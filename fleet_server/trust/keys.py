"""The fleet server's signing keys: where they live, how they are made and loaded.

Two stores, on purpose in two places:

- ``keys_dir`` (``data_dir/keys``) holds the ONLINE keys the running server signs with: TUF
  ``targets``, ``snapshot`` and ``timestamp`` and the Ed25519 ``director`` key for
  assignments. One PKCS#8 PEM file per role, mode 0600.
- ``root_keys_dir`` holds the TUF ROOT keys, named ``<keyid>.pem``. They are only needed to
  create the repository and to sign a new root version, so after ``init_keys`` they belong
  offline (an encrypted USB stick, a vault); a stolen online store then cannot re-key the fleet.
  ``root_policy.json`` beside them records the threshold chosen at init.

Rotation (replacing keys and publishing a new root with them) is in ``fleet_server.trust.rotation``,
which drives a ``TufRepository``; this module never touches TUF metadata, so ``tuf_repo`` can
import it without a circle. It does not encrypt keys at rest (file permissions and moving root keys offline are the protection; an HSM or
KMS signer can replace ``CryptoSigner`` later because callers only see
``securesystemslib.signer.Signer``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.assignment import DirectorSigner
from edgefleet.atomic import atomic_write_json, fsync_dir
from fleet_server.trust.errors import KeyStoreError

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner, Key, Signer  # type: ignore[attr-defined]  # public API, not re-exported for mypy

log = logging.getLogger(__name__)

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
DIRECTOR_FILE = "director.pem"
ROOT_POLICY_FILE = "root_policy.json"
RETIRED_DIR = "retired"
KEY_MODE = 0o600

OFFLINE_WARNING = (
    "the TUF root keys in {dir} can re-key the whole fleet: move them offline "
    "(encrypted removable media or a vault) and bring them back only to rotate the root"
)


@dataclass(frozen=True)
class InitSummary:
    """What ``init_keys`` created: key ids per role and where the files are."""

    keys_dir: Path
    root_keys_dir: Path
    root_keyids: tuple[str, ...]
    root_threshold: int
    online_keyids: Mapping[str, str]
    director_keyid: str
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= self.root_threshold <= len(self.root_keyids):
            raise ValueError("root_threshold must be between 1 and the number of root keys")
        if set(self.online_keyids) != set(ONLINE_ROLES):
            raise ValueError(f"online_keyids must name exactly {ONLINE_ROLES}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys_dir": str(self.keys_dir),
            "root_keys_dir": str(self.root_keys_dir),
            "root_keyids": list(self.root_keyids),
            "root_threshold": self.root_threshold,
            "online_keyids": dict(self.online_keyids),
            "director_keyid": self.director_keyid,
            "warnings": list(self.warnings),
        }


def generate_signer() -> CryptoSigner:
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # public API, not re-exported for mypy

    return CryptoSigner.generate_ed25519()


def create_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a NEW file ``path`` (mode 0600), atomically and never over an old one.

    ``os.link`` of a fully written temp file fails if the name exists, so two racing inits
    cannot both win and a crash never leaves a half-written key under the real name.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), KEY_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise KeyStoreError(f"refusing to overwrite the existing key {path}",
                                fix="keep the existing keys, or move them away first if you really mean to replace them") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def _read_private_pem(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise KeyStoreError(f"signing key {path} does not exist",
                            fix="run `edgefleet keys init` (or point --data-dir at the right place)") from exc
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyStoreError(f"signing key {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o})",
                            fix=f"chmod 600 {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read signing key {path}: {exc.strerror}", fix="check the file's owner") from exc


def load_crypto_signer(path: Path) -> CryptoSigner:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # public API, not re-exported for mypy

    pem = _read_private_pem(path)
    try:
        private = serialization.load_pem_private_key(pem, password=None)
        return CryptoSigner(private)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{path} is not an unencrypted PKCS#8 Ed25519 private key: {exc}",
                            fix="restore the key file from backup") from exc


class KeyStore:
    """The online keys, loaded: a TUF signer per online role and the director signer."""

    def __init__(self, signers: Mapping[str, Signer], director: DirectorSigner, *, keys_dir: Path | None = None) -> None:
        missing = [r for r in ONLINE_ROLES if r not in signers]
        if missing:
            raise KeyStoreError(f"key store lacks signers for {', '.join(missing)}")
        self._signers = dict(signers)
        self._director = director
        self.keys_dir = keys_dir

    @classmethod
    def load(cls, keys_dir: Path) -> KeyStore:
        """Load ``<role>.pem`` for targets, snapshot, timestamp and ``director.pem`` (each must be 0600)."""
        keys_dir = Path(keys_dir)
        signers: dict[str, Signer] = {role: load_crypto_signer(keys_dir / f"{role}.pem") for role in ONLINE_ROLES}
        try:
            director = DirectorSigner.from_pem(_read_private_pem(keys_dir / DIRECTOR_FILE))
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{keys_dir / DIRECTOR_FILE} is not an Ed25519 private key",
                                fix="restore the key file from backup") from exc
        return cls(signers, director, keys_dir=keys_dir)

    @property
    def director(self) -> DirectorSigner:
        return self._director

    def signer(self, role: str) -> Signer:
        """The python-tuf signer for an online role (``targets``, ``snapshot`` or ``timestamp``)."""
        try:
            return self._signers[role]
        except KeyError:
            raise KeyStoreError(f"no online key for role {role!r}: online roles are {', '.join(ONLINE_ROLES)}",
                                fix="root keys are kept offline; use rotate_root with the root key directory") from None

    def public_key(self, role: str) -> Key:
        return self.signer(role).public_key


def check_separate(keys_dir: Path, root_keys_dir: Path) -> None:
    online, root = keys_dir.resolve(), root_keys_dir.resolve()
    if root == online or online in root.parents or root in online.parents:
        raise KeyStoreError(f"root key directory {root_keys_dir} must not overlap the online key directory {keys_dir}",
                            fix="give a root key directory outside data_dir/keys, e.g. ~/edgefleet-root-keys")


def write_root_key(root_keys_dir: Path, signer: CryptoSigner) -> Path:
    path = root_keys_dir / f"{signer.public_key.keyid}.pem"
    create_secret_file(path, signer.private_bytes)
    return path


def read_root_threshold(root_keys_dir: Path) -> int | None:
    """The root threshold recorded at init (``root_policy.json``), or None if there is none."""
    path = Path(root_keys_dir) / ROOT_POLICY_FILE
    try:
        return int(json.loads(path.read_text())["threshold"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{path} is malformed: {exc}", fix='write {"threshold": N} into it') from exc


def load_root_signers(root_keys_dir: Path, keyids: Iterable[str] | None = None) -> list[CryptoSigner]:
    """The root signers found in ``root_keys_dir`` (all ``*.pem``, or only those in ``keyids``)."""
    root_keys_dir = Path(root_keys_dir)
    if not root_keys_dir.is_dir():
        raise KeyStoreError(f"root key directory {root_keys_dir} does not exist",
                            fix="mount the offline root key media and pass its directory")
    wanted = None if keyids is None else set(keyids)
    signers = []
    for path in sorted(root_keys_dir.glob("*.pem")):
        if wanted is not None and path.stem not in wanted:
            continue
        signer = load_crypto_signer(path)
        if signer.public_key.keyid != path.stem:
            raise KeyStoreError(f"root key file {path.name} holds key {signer.public_key.keyid}, not {path.stem}",
                                fix="rename the file to <keyid>.pem")
        signers.append(signer)
    return signers


def init_keys(keys_dir: Path, root_keys_dir: Path, *, root_threshold: int = 1, root_key_count: int = 1) -> InitSummary:
    """Create root keys in ``root_keys_dir`` and online + director keys in ``keys_dir``.

    Refuses (``KeyStoreError``) to overwrite any existing key; logs a warning that the root
    keys must be moved offline (also returned in ``InitSummary.warnings`` for the CLI).
    """
    keys_dir, root_keys_dir = Path(keys_dir), Path(root_keys_dir)
    if root_key_count < 1 or not 1 <= root_threshold <= root_key_count:
        raise KeyStoreError(f"root threshold {root_threshold} of {root_key_count} keys is impossible",
                            fix="use 1 <= threshold <= key count, e.g. --root-threshold 2 --root-keys 3")
    check_separate(keys_dir, root_keys_dir)
    existing = [keys_dir / f"{r}.pem" for r in ONLINE_ROLES] + [keys_dir / DIRECTOR_FILE]
    existing = [p for p in existing if p.exists()]
    if root_keys_dir.is_dir():
        existing += sorted(root_keys_dir.glob("*.pem"))
    if existing:
        raise KeyStoreError(f"keys already exist ({', '.join(str(p) for p in existing)}); refusing to overwrite them",
                            fix="keep using them, or move them away first if you really mean to start a new trust root")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_signers = [generate_signer() for _ in range(root_key_count)]
    for signer in root_signers:
        write_root_key(root_keys_dir, signer)
    atomic_write_json(root_keys_dir / ROOT_POLICY_FILE, {"threshold": root_threshold}, mode=KEY_MODE)
    online: dict[str, str] = {}
    for role in ONLINE_ROLES:
        signer = generate_signer()
        create_secret_file(keys_dir / f"{role}.pem", signer.private_bytes)
        online[role] = signer.public_key.keyid
    director = DirectorSigner.generate()
    create_secret_file(keys_dir / DIRECTOR_FILE, director.private_pem())
    warning = OFFLINE_WARNING.format(dir=root_keys_dir)
    log.warning(warning)
    return InitSummary(
        keys_dir=keys_dir,
        root_keys_dir=root_keys_dir,
        root_keyids=tuple(s.public_key.keyid for s in root_signers),
        root_threshold=root_threshold,
        online_keyids=online,
        director_keyid=director.keyid,
        warnings=(warning,),
    )
