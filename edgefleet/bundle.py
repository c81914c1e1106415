"""The bundle: one model version as a deterministic archive, and its reader.

A bundle is a tar archive (gzip-compressed unless written with ``compress=False``) whose
first member is ``manifest.json``, followed by the files the manifest lists, sorted by name.
Member metadata is fixed (mtime 0, uid/gid 0, mode 0644, no user names) and gzip's own
header timestamp is zeroed, so the same inputs always give the same bytes and sha256.

``read_bundle`` is the one gate every consumer goes through (server on upload, agent before
staging, ``edgefleet bundle inspect``). It refuses anything that is not exactly that shape:
links, directories, path tricks, duplicate or unlisted members, a file whose sha256 or size
disagrees with the manifest, truncation, or an archive bigger than ``max_bytes`` (so a hostile
archive cannot fill a device's disk or memory).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.atomic import atomic_write_bytes
from edgefleet.canonical import pretty_json
from edgefleet.errors import BundleError, EdgefleetError
from edgefleet.manifest import FileEntry, Manifest

MANIFEST_NAME = "manifest.json"
DEFAULT_MAX_BYTES = 2 * 1024**3
BUNDLE_SUFFIX = ".tar.gz"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_filename(name: str, version: str) -> str:
    return f"{name}-{version}{BUNDLE_SUFFIX}"


@dataclass(frozen=True)
class Bundle:
    """A bundle that passed every check of ``read_bundle``."""

    manifest: Manifest
    files: Mapping[str, bytes]
    sha256: str
    size: int

    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest.model_file]

    def golden(self) -> dict[str, Any]:
        """Golden samples: ``{"inputs": rows, "outputs": {role: values}}`` from the ORIGINAL model."""
        return _json_member(self.files, self.manifest.golden_file)

    def reference(self) -> dict[str, Any]:
        """Reference profile for drift: per-feature bin edges and counts, output distribution."""
        return _json_member(self.files, self.manifest.reference_file)

    def extract(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle's files into ``directory`` (each atomically) and return it."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target / MANIFEST_NAME, pretty_json(self.manifest.to_dict()))
        for name, data in sorted(self.files.items()):
            atomic_write_bytes(target / name, data)
        return target


def _json_member(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    try:
        value = json.loads(files[name])
    except (KeyError, ValueError) as exc:
        raise BundleError(f"bundle member {name} is missing or not JSON") from exc
    if not isinstance(value, dict):
        raise BundleError(f"bundle member {name} is not a JSON object")
    return value


def build_bundle_bytes(manifest_fields: Mapping[str, Any], files: Mapping[str, bytes], *, compress: bool = True) -> bytes:
    """Return the archive bytes for ``files`` and a manifest built from ``manifest_fields``.

    ``manifest_fields`` is a manifest dict without ``files``: the sha256 and size of each file
    are filled in here, so they cannot disagree with what is packed.
    """
    document = dict(manifest_fields)
    document["files"] = {n: {"sha256": sha256_bytes(d), "size": len(d)} for n, d in sorted(files.items())}
    manifest = Manifest.from_dict(document)  # validate before anything is written
    manifest_bytes = pretty_json(manifest.to_dict())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [(MANIFEST_NAME, manifest_bytes), *sorted(files.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    payload = raw.getvalue()
    if not compress:
        return payload
    out = io.BytesIO()
    # mtime=0 and no file name in the gzip header: byte-identical output on every run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    return out.getvalue()


def write_bundle(path: str | os.PathLike[str], manifest_fields: Mapping[str, Any], files: Mapping[str, bytes],
                 *, compress: bool = True) -> str:
    """Write a bundle atomically to ``path`` and return its sha256."""
    data = build_bundle_bytes(manifest_fields, files, compress=compress)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def read_bundle(source: str | os.PathLike[str] | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Bundle:
    """Read and fully validate a bundle from a path or from bytes."""
    if isinstance(source, bytes):
        data = source
        label = "bundle"
    else:
        path = Path(source)
        label = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise BundleError(f"bundle {label} does not exist", fix="check the path") from exc
        if size > max_bytes:
            raise BundleError(f"bundle {label} is {size} bytes, over the {max_bytes}-byte limit")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise BundleError(f"{label} is {len(data)} bytes, over the {max_bytes}-byte limit")
    if data[:2] == b"\x1f\x8b":
        try:
            payload = _gunzip_bounded(data, max_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{label} is truncated or not a valid gzip archive ({exc})",
                              fix="download or copy the bundle again") from exc
    else:
        payload = data
    members = _read_members(payload, label)
    if not members or next(iter(members)) != MANIFEST_NAME:
        raise BundleError(f"{label} does not start with {MANIFEST_NAME}", fix="build bundles with `edgefleet convert`")
    try:
        document = json.loads(members.pop(MANIFEST_NAME))
    except ValueError as exc:
        raise BundleError(f"{label}: manifest.json is not valid JSON ({exc})") from exc
    try:
        manifest = Manifest.from_dict(document)
    except EdgefleetError as exc:
        raise BundleError(f"{label}: {exc}") from exc
    _check_files(manifest.files, members, label)
    return Bundle(manifest=manifest, files=members, sha256=sha256_bytes(data), size=len(data))


def _gunzip_bounded(data: bytes, max_bytes: int) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        while chunk := gz.read(1 << 20):
            out.write(chunk)
            if out.tell() > max_bytes:
                raise BundleError(f"bundle expands past the {max_bytes}-byte limit (a decompression bomb?)")
    return out.getvalue()


def _read_members(payload: bytes, label: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            for info in tar:
                name = info.name
                if not info.isfile():
                    raise BundleError(f"{label}: member {name!r} is not a regular file (links and directories are refused)")
                if "/" in name or "\\" in name or name.startswith(".") or name in members:
                    raise BundleError(f"{label}: member name {name!r} is not allowed or appears twice")
                handle = tar.extractfile(info)
                if handle is None:
                    raise BundleError(f"{label}: member {name!r} cannot be read")
                content = handle.read()
                if len(content) != info.size:
                    raise BundleError(f"{label}: member {name!r} is truncated", fix="download or copy the bundle again")
                members[name] = content
    except tarfile.TarError as exc:
        raise BundleError(f"{label} is not a valid bundle archive ({exc})", fix="download or copy the bundle again") from exc
    return members


def _check_files(listed: Mapping[str, FileEntry], members: Mapping[str, bytes], label: str) -> None:
    for name, entry in listed.items():
        if name not in members:
            raise BundleError(f"{label}: {name} is listed in the manifest but missing from the archive")
        content = members[name]
        if len(content) != entry.size or sha256_bytes(content) != entry.sha256:
            raise BundleError(f"{label}: {name} does not match its sha256 in the manifest (tampered or corrupted)",
                              fix="rebuild the bundle or fetch it again from the registry")
    extra = sorted(set(members) - set(listed))
    if extra:
        raise BundleError(f"{label}: archive holds files the manifest does not list: {', '.join(extra)}")
