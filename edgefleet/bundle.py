"""The bundle: one model version as a deterministic archive, and its reader.

A bundle is a tar archive (gzip-compressed unless written with ``compress=False``) whose
first member is ``manifest.json``, followed by the files the manifest lists, sorted by name.
Member metadata is fixed (mtime 0, uid/gid 0, mode 0644, no user names) and gzip's own
header timestamp is zeroed, so the same inputs always give the same bytes and sha256.

``read_bundle`` is the one gate every consumer goes through (agent before staging, the
server's prediction cache); ``verify_bundle`` runs the same checks and keeps no file (server
on upload, ``edgefleet bundle inspect``). They refuse anything that is not exactly that shape:
links, directories, PAX and GNU extension headers, path tricks, duplicate or unlisted members,
a file whose sha256 or size disagrees with the manifest, truncation, trailing data, or an
archive bigger than ``max_bytes``.

What a hostile archive may cost is bounded before the work, not after: the archive streams
through the decompressor and is never expanded whole; ``manifest.json`` must come first and
be at most ``MAX_MANIFEST_BYTES``; each member's header must give the size the manifest lists,
and those sizes must add up to at most ``max_bytes``, before a byte of any member is read.
Every member is hashed as it streams by and nothing is kept on the first pass;
``read_bundle`` reads the archive a second time to keep the files only once all of them have
matched, and its ``accept`` hook sees the manifest before any other member is read. So a gzip
bomb, a member whose content is not what the manifest says, or a model too big for the device
costs a megabyte or so of memory before it is refused, whatever the sizes claim. The price is
decompressing an accepted bundle twice.

It does not parse golden.json or reference.json (``Bundle.golden``/``reference`` do, on demand)
and does not look inside the model file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from edgefleet.atomic import atomic_write_bytes
from edgefleet.canonical import pretty_json
from edgefleet.errors import BundleError, EdgefleetError
from edgefleet.manifest import Manifest

MANIFEST_NAME = "manifest.json"
DEFAULT_MAX_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 1 << 20
"""manifest.json's size limit: a thousand class labels or feature names take a few tens of KiB,
and parsing a megabyte of the worst JSON (``[[],[],...]``) costs Python about 25 MB."""
BUNDLE_SUFFIX = ".tar.gz"
_BLOCK = 512  # tar's header and padding unit
_RECORD = 20 * _BLOCK  # tar pads the archive, end-of-archive blocks included, to a record
_CHUNK = 1 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)  # not CONTTYPE or GNU sparse, which isfile() also takes


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
class BundleInfo:
    """A bundle that passed every check of ``verify_bundle``: its manifest and the archive's hash and size."""

    manifest: Manifest
    sha256: str
    size: int


@dataclass(frozen=True)
class Bundle(BundleInfo):
    """A bundle that passed every check of ``read_bundle``, with its files."""

    files: Mapping[str, bytes]

    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest.model_file]

    def golden(self) -> dict[str, Any]:
        """Golden samples: ``{"inputs": rows, "outputs": {role: values}}`` from the ORIGINAL model
        (golden.json, or golden.npz for tensor inputs: ``edgefleet.golden``)."""
        name = self.manifest.golden_file
        if name.endswith(".npz"):
            from edgefleet.golden import read_golden  # numpy, only for bundles that need it

            if name not in self.files:
                raise BundleError(f"bundle member {name} is missing")
            return read_golden(name, self.files[name])
        return _json_member(self.files, name)

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


def verify_bundle(source: str | os.PathLike[str] | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> BundleInfo:
    """Check a bundle from a path or from bytes, streaming: memory stays at about a megabyte."""
    manifest, _, sha, size = _scan(source, max_bytes, keep=False)
    return BundleInfo(manifest=manifest, sha256=sha, size=size)


def read_bundle(source: str | os.PathLike[str] | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                accept: Callable[[Manifest], None] | None = None) -> Bundle:
    """Read and fully validate a bundle from a path or from bytes, and keep its files.

    ``accept`` is called with the manifest as soon as it is read, before any other member is
    read or kept; it refuses by raising (the agent checks the device's profile there, so a model
    too big for it is never even decompressed).
    """
    _, _, sha, _ = _scan(source, max_bytes, keep=False, accept=accept)
    manifest, files, again, size = _scan(source, max_bytes, keep=True)
    if again != sha:  # only a path can change between the passes
        raise BundleError(f"{_label(source)} changed while it was being read", fix="copy the bundle again and retry")
    return Bundle(manifest=manifest, files=files, sha256=sha, size=size)


def _label(source: str | os.PathLike[str] | bytes) -> str:
    return "bundle" if isinstance(source, bytes) else str(source)


class _Readable(Protocol):
    """What a GzipFile and ``_Counted`` both are here."""

    def read(self, size: int = -1, /) -> bytes: ...


class _Counted:
    """The raw archive as read: hashed, counted, and cut off at ``limit`` bytes."""

    def __init__(self, raw: BinaryIO, limit: int, label: str) -> None:
        self._raw = raw
        self._limit = limit
        self._label = label
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(_CHUNK if size < 0 else size)
        self.size += len(data)
        if self.size > self._limit:  # a path that grew after its size was checked
            raise BundleError(f"{self._label} is over the {self._limit}-byte limit")
        self.digest.update(data)
        return data

    def seek(self, offset: int, /) -> int:
        # GzipFile only seeks to rewind, which this one-way pass never asks of it.
        raise io.UnsupportedOperation("the archive is read once, front to back")


@contextmanager
def _open(source: str | os.PathLike[str] | bytes, max_bytes: int) -> Iterator[tuple[BinaryIO, str]]:
    label = _label(source)
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise BundleError(f"{label} is {len(source)} bytes, over the {max_bytes}-byte limit")
        yield io.BytesIO(source), label
        return
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below, after the caller's with-block
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {label} does not exist", fix="check the path") from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise BundleError(f"bundle {label} is {size} bytes, over the {max_bytes}-byte limit")
        yield handle, label


def _scan(source: str | os.PathLike[str] | bytes, max_bytes: int, *, keep: bool,
          accept: Callable[[Manifest], None] | None = None) -> tuple[Manifest, dict[str, bytes], str, int]:
    """One streaming pass over the archive: (manifest, files if ``keep``, sha256, size)."""
    with _open(source, max_bytes) as (raw, label):
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        counted = _Counted(raw, max_bytes, label)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=counted, mode="rb") as stream:
                    manifest, files = _members(stream, label, max_bytes, keep, accept)
            else:
                manifest, files = _members(counted, label, max_bytes, keep, accept)
            while counted.read(_CHUNK):  # gzip stops at its trailer; anything after it is hashed too
                pass
        except (OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{label} is truncated or not a valid gzip archive ({exc})",
                              fix="download or copy the bundle again") from exc
        return manifest, files, counted.digest.hexdigest(), counted.size


def _exactly(stream: _Readable, size: int, label: str) -> Iterator[bytes]:
    """``size`` bytes from ``stream`` in chunks; a short read means the archive was cut."""
    while size > 0:
        chunk = stream.read(min(size, _CHUNK))
        if not chunk:
            raise BundleError(f"{label} is truncated", fix="download or copy the bundle again")
        size -= len(chunk)
        yield chunk


def _header(stream: _Readable, label: str) -> tarfile.TarInfo | None:
    """The next member's header, or None at the end-of-archive block."""
    block = b"".join(_exactly(stream, _BLOCK, label))
    if block == bytes(_BLOCK):
        return None
    try:
        # frombuf parses one header block and nothing else: unlike iterating a TarFile, it never
        # reads a PAX or GNU long-name payload, whose size the archive alone decides.
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.TarError, ValueError) as exc:
        raise BundleError(f"{label} is not a valid bundle archive ({exc})", fix="download or copy the bundle again") from exc
    name = info.name
    if info.type not in _REGULAR:
        raise BundleError(f"{label}: member {name!r} is not a regular file (links, directories and extension "
                          "headers are refused)")
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        raise BundleError(f"{label}: member name {name!r} is not allowed or appears twice")
    return info


def _content(stream: _Readable, info: tarfile.TarInfo, label: str, keep: bool) -> tuple[str, bytes]:
    """(sha256, the bytes if ``keep`` else b"") of the member whose header was just read."""
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    for chunk in _exactly(stream, info.size, label):
        digest.update(chunk)
        if keep:
            chunks.append(chunk)
    for _ in _exactly(stream, -info.size % _BLOCK, label):  # padding to the next block
        pass
    return digest.hexdigest(), b"".join(chunks)


def _members(stream: _Readable, label: str, max_bytes: int, keep: bool,
             accept: Callable[[Manifest], None] | None) -> tuple[Manifest, dict[str, bytes]]:
    # 1. manifest.json comes first, and its size is checked before it is read.
    info = _header(stream, label)
    if info is None or info.name != MANIFEST_NAME:
        raise BundleError(f"{label} does not start with {MANIFEST_NAME}", fix="build bundles with `edgefleet convert`")
    if info.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{label}: {MANIFEST_NAME} claims {info.size} bytes, over the {MAX_MANIFEST_BYTES}-byte "
                          "limit (a decompression bomb?)", fix="build bundles with `edgefleet convert`")
    manifest = _manifest(_content(stream, info, label, keep=True)[1], label)
    # 2. The listed sizes must fit the limit, and the caller accept the manifest, before any member is read.
    listed = manifest.files
    total = info.size + sum(entry.size for entry in listed.values())
    if total > max_bytes:
        raise BundleError(f"{label}: its files add up to {total} bytes, over the {max_bytes}-byte limit")
    if accept is not None:
        accept(manifest)
    # 3. Each member: listed, once, the listed size by its header, the listed sha256 by its bytes.
    files: dict[str, bytes] = {}
    seen: set[str] = set()
    while (info := _header(stream, label)) is not None:
        name = info.name
        if name in seen or name == MANIFEST_NAME:
            raise BundleError(f"{label}: member name {name!r} is not allowed or appears twice")
        entry = listed.get(name)
        if entry is None:
            raise BundleError(f"{label}: archive holds files the manifest does not list: {name}")
        if info.size != entry.size:
            raise BundleError(f"{label}: {name} is {info.size} bytes in the archive but {entry.size} in the manifest "
                              "(tampered or corrupted)", fix="rebuild the bundle or fetch it again from the registry")
        sha, data = _content(stream, info, label, keep)
        if sha != entry.sha256:
            raise BundleError(f"{label}: {name} does not match its sha256 in the manifest (tampered or corrupted)",
                              fix="rebuild the bundle or fetch it again from the registry")
        seen.add(name)
        if keep:
            files[name] = data
    missing = sorted(set(listed) - seen)
    if missing:
        raise BundleError(f"{label}: {missing[0]} is listed in the manifest but missing from the archive")
    # 4. After the end-of-archive block only tar's zero padding may follow (at most a record).
    tail = stream.read(2 * _RECORD)
    if len(tail) > _RECORD or tail.count(0) != len(tail):
        raise BundleError(f"{label} holds data after the end of the archive",
                          fix="rebuild the bundle or fetch it again from the registry")
    return manifest, files


def _manifest(data: bytes, label: str) -> Manifest:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{label}: manifest.json is not valid JSON ({exc})") from exc
    try:
        return Manifest.from_dict(document)
    except EdgefleetError as exc:
        raise BundleError(f"{label}: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:  # a shape from_dict did not foresee
        raise BundleError(f"{label}: manifest.json is malformed ({type(exc).__name__}: {exc})") from exc
