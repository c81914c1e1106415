"""Key rotation: new root keys, or a new online key, published in a new TUF root version.

``rotate_root`` replaces the root keys, ``rotate_online_key`` one online role's key (for a lost
or leaked key); both write the new key files with ``fleet_server.trust.keys`` and ask the
``TufRepository`` to publish root N+1 signed by the current root keys, so devices follow the
chain. This module sits above both ``keys`` and ``tuf_repo`` (neither imports it), which keeps
the two free of an import circle. It does not create a repository or first keys (``keys.init_keys``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.atomic import atomic_write_json, fsync_dir
from fleet_server.trust.errors import KeyStoreError, ThresholdError
from fleet_server.trust.keys import (
    KEY_MODE,
    ONLINE_ROLES,
    RETIRED_DIR,
    ROOT_POLICY_FILE,
    check_separate,
    create_secret_file,
    generate_signer,
    load_crypto_signer,
    load_root_signers,
    write_root_key,
)

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # public API, not re-exported for mypy

    from fleet_server.trust.tuf_repo import TufRepository


def rotate_root(keys_dir: Path, root_keys_dir: Path, repo: TufRepository, *,
                new_root_key_count: int = 1, new_threshold: int = 1) -> int:
    """Replace the root keys: publish root N+1 signed by a threshold of the old keys AND the new ones.

    Devices holding root N verify N+1 with N's keys and then with its own, so they follow
    the chain (TUF client workflow 5.3). New key files are written before the root is
    published (a crash between leaves only an unused key file); the old ones move to
    ``root_keys_dir/retired/``. Returns the new root version.
    """
    keys_dir, root_keys_dir = Path(keys_dir), Path(root_keys_dir)
    if new_root_key_count < 1 or not 1 <= new_threshold <= new_root_key_count:
        raise KeyStoreError(f"root threshold {new_threshold} of {new_root_key_count} keys is impossible",
                            fix="use 1 <= threshold <= key count")
    check_separate(keys_dir, root_keys_dir)
    old_signers = _current_root_signers(root_keys_dir, repo)
    new_signers = [generate_signer() for _ in range(new_root_key_count)]
    written = [write_root_key(root_keys_dir, s) for s in new_signers]
    try:
        version = repo.publish_root([s.public_key for s in new_signers], new_threshold,
                                    old_signers=old_signers, new_signers=new_signers)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    atomic_write_json(root_keys_dir / ROOT_POLICY_FILE, {"threshold": new_threshold}, mode=KEY_MODE)
    retired = root_keys_dir / RETIRED_DIR
    retired.mkdir(exist_ok=True, mode=0o700)
    for signer in old_signers:
        name = f"{signer.public_key.keyid}.pem"
        os.replace(root_keys_dir / name, retired / name)
    fsync_dir(root_keys_dir)
    return version


def _current_root_signers(root_keys_dir: Path, repo: TufRepository) -> list[CryptoSigner]:
    keyids, threshold = repo.root_keyids()
    signers = load_root_signers(root_keys_dir, keyids)
    if len(signers) < threshold:
        raise ThresholdError(
            f"this needs {threshold} of the current root keys but only {len(signers)} are in {root_keys_dir}",
            fix="mount the offline root key media holding the current root keys")
    return signers


def rotate_online_key(keys_dir: Path, root_keys_dir: Path, repo: TufRepository, role: str) -> int:
    """Replace the online key of ``role`` (targets, snapshot or timestamp); return the root version naming it.

    For a lost or leaked online key. The new key is written to ``<role>.pem.next`` first,
    root N+1 naming it is signed by the current root keys, then the key file is swapped
    (the old one moves to ``keys_dir/retired/``) and the role is re-signed with it. Every
    step is resumable: after a crash, running it again finishes the same rotation. Other
    replicas pick the new key up from the shared key directory on their next signature.
    """
    keys_dir, root_keys_dir = Path(keys_dir), Path(root_keys_dir)
    if role not in ONLINE_ROLES:
        raise KeyStoreError(f"{role!r} is not an online role", fix=f"use one of {', '.join(ONLINE_ROLES)}; "
                            "root keys are replaced with rotate_root")
    check_separate(keys_dir, root_keys_dir)
    pending = keys_dir / f"{role}.pem.next"
    if pending.exists():
        signer = load_crypto_signer(pending)  # an earlier run stopped half-way: finish it
    else:
        signer = generate_signer()
        create_secret_file(pending, signer.private_bytes)
    if signer.public_key.keyid in repo.role_keyids(role)[0]:
        version = repo.root_version()
    else:
        root_signers = _current_root_signers(root_keys_dir, repo)
        version = repo.publish_root(None, None, old_signers=root_signers,
                                    role_keys={role: signer.public_key})
    current = keys_dir / f"{role}.pem"
    if current.exists():
        retired = keys_dir / RETIRED_DIR
        retired.mkdir(exist_ok=True, mode=0o700)
        old_keyid = load_crypto_signer(current).public_key.keyid
        os.replace(current, retired / f"{role}-{old_keyid}.pem")
    os.replace(pending, current)
    fsync_dir(keys_dir)
    repo.resign(role)
    return version
