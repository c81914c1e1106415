"""The bundle reader is the gate: it refuses every malformed, truncated or tampered archive."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.bundle import build_bundle_bytes, read_bundle, write_bundle
from edgefleet.errors import BundleError, ManifestError
from tests.unit.core.helpers import bundle_files, manifest_fields

GOOD = build_bundle_bytes(manifest_fields(), bundle_files())


def _retar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return raw.getvalue()


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        out = []
        for info in tar:
            handle = tar.extractfile(info)
            out.append((info, handle.read() if handle else b""))
        return out


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    first = write_bundle(tmp_path / "a.tar.gz", manifest_fields(), bundle_files())
    second = write_bundle(tmp_path / "b.tar.gz", manifest_fields(), bundle_files())
    assert first == second
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_round_trip_reads_manifest_and_files(tmp_path: Path) -> None:
    path = tmp_path / "digits-1.0.0.tar.gz"
    sha = write_bundle(path, manifest_fields(), bundle_files())
    bundle = read_bundle(path)
    assert bundle.sha256 == sha
    assert bundle.manifest.ref == "digits@1.0.0"
    assert bundle.model_bytes == bundle_files()["model.onnx"]
    assert bundle.golden()["outputs"]["label"] == [1]
    assert read_bundle(GOOD).manifest == bundle.manifest
    extracted = bundle.extract(tmp_path / "slot")
    assert (extracted / "model.onnx").read_bytes() == bundle.model_bytes


def test_uncompressed_bundle_reads_too() -> None:
    plain = build_bundle_bytes(manifest_fields(), bundle_files(), compress=False)
    assert read_bundle(plain).manifest.name == "digits"


def test_tampered_model_is_refused() -> None:
    members = _members(GOOD)
    members = [(i, d.replace(b"fake", b"evil") if i.name == "model.onnx" else d) for i, d in members]
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        read_bundle(_retar(members))


def test_unlisted_member_is_refused() -> None:
    extra = tarfile.TarInfo("payload.sh")
    extra.size = 3
    with pytest.raises(BundleError, match="does not list: payload.sh"):
        read_bundle(_retar([*_members(GOOD), (extra, b"rm ")]))


@pytest.mark.parametrize("name", ["../evil", "sub/model.onnx", ".hidden"])
def test_path_tricks_are_refused(name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    with pytest.raises(BundleError, match="not allowed"):
        read_bundle(_retar([*_members(GOOD), (info, b"x")]))


def test_symlink_member_is_refused() -> None:
    link = tarfile.TarInfo("model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    members = [m for m in _members(GOOD) if m[0].name != "model.onnx"] + [(link, b"")]
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(_retar(members))


def test_manifest_must_come_first() -> None:
    members = _members(GOOD)
    with pytest.raises(BundleError, match="does not start with manifest.json"):
        read_bundle(_retar(members[1:] + members[:1]))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle(tmp_path / "nope.tar.gz")


def test_size_limit_stops_oversized_bundles() -> None:
    with pytest.raises(BundleError, match="limit"):
        read_bundle(GOOD, max_bytes=100)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(GOOD) - 1))
def test_any_truncation_is_a_bundle_error(cut: int) -> None:
    with pytest.raises(BundleError):
        read_bundle(GOOD[:cut])


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=10, max_value=len(GOOD) - 9), flip=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused_or_changes_nothing(position: int, flip: int) -> None:
    data = bytearray(GOOD)
    data[position] ^= flip
    # A flip in deflate's padding bits leaves the content intact; that is the only way through.
    # (The bundle's own sha256, which TUF checks before this reader runs, changes either way.)
    try:
        bundle = read_bundle(bytes(data))
    except BundleError:
        return
    original = read_bundle(GOOD)
    assert bundle.files == original.files and bundle.manifest == original.manifest
    assert bundle.sha256 != original.sha256


def test_writer_validates_manifest_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="version"):
        write_bundle(tmp_path / "x.tar.gz", manifest_fields(version="one"), bundle_files())
    assert not list(tmp_path.iterdir())
