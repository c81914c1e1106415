"""Hostile archives: what they would cost is refused before the work (issue 14).

The reader never expands an archive whole: a manifest over its limit, member sizes that add up
over ``max_bytes``, or a header that disagrees with the manifest is refused from the header
alone, before a byte of content is read. These archives carry no content past their headers,
so a reader that tried to read it would fail with "truncated" instead of naming the problem.
tests/integration/hostile/test_archive_memory.py measures the memory of the real CLIs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.bundle import MAX_MANIFEST_BYTES, build_bundle_bytes, read_bundle, verify_bundle
from edgefleet.canonical import pretty_json
from edgefleet.errors import BundleError, EdgefleetError
from edgefleet.manifest import Manifest
from tests.unit.core.helpers import bundle_files, manifest_fields

GOOD = build_bundle_bytes(manifest_fields(), bundle_files())
GIB = 1 << 30


def _header(name: str, size: int, fmt: Literal[0, 1, 2] = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=fmt)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + bytes(-len(data) % 512)


def _listing(**sizes: int) -> dict[str, Any]:
    """Manifest fields whose ``files`` claim these sizes (and a sha256 nothing will match)."""
    files = {name.replace("_", "."): {"sha256": "0" * 64, "size": size} for name, size in sizes.items()}
    return manifest_fields() | {"files": files}


def _manifest_member(document: dict[str, Any]) -> bytes:
    return _member("manifest.json", pretty_json(document))


def test_a_manifest_claiming_512_mib_is_refused_from_its_header() -> None:
    bomb = gzip.compress(_header("manifest.json", 512 << 20))
    with pytest.raises(BundleError, match=f"claims 536870912 bytes, over the {MAX_MANIFEST_BYTES}-byte limit"):
        read_bundle(bomb)
    with pytest.raises(BundleError, match="over the"):
        verify_bundle(bomb)


def test_member_sizes_adding_up_over_the_limit_are_refused_before_any_is_read() -> None:
    archive = gzip.compress(_manifest_member(_listing(model_onnx=GIB, golden_json=2, reference_json=2)))
    with pytest.raises(BundleError, match=r"add up to \d+ bytes, over the 1000000-byte limit"):
        read_bundle(archive, max_bytes=1_000_000)


def test_a_member_header_larger_than_its_listing_is_refused_before_it_is_read() -> None:
    listing = _listing(model_onnx=5, golden_json=2, reference_json=2)
    archive = gzip.compress(_manifest_member(listing) + _header("golden.json", 4 * GIB))
    with pytest.raises(BundleError, match="golden.json is 4294967296 bytes in the archive but 2 in the manifest"):
        read_bundle(archive)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_extension_headers_are_refused_whatever_size_they_claim(fmt: Literal[0, 1, 2]) -> None:
    # A long name makes tarfile write a PAX ('x') or GNU long-name ('L') header first; tarfile
    # itself would read that header's whole payload into memory, however large it says it is.
    extended = _header("m" * 120, 1, fmt)
    assert extended[156:157] in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME)
    forged = bytearray(extended[:512])
    forged[124:136] = b"%011o\0" % (4 * GIB)  # the extension payload's size
    forged[148:156] = b" " * 8  # tar's checksum: the header's byte sum with this field as spaces
    forged[148:156] = b"%06o\0 " % sum(forged)
    assert tarfile.TarInfo.frombuf(bytes(forged), "utf-8", "strict").size == 4 * GIB
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(gzip.compress(_member("manifest.json", _manifest_of(GOOD)) + bytes(forged)))


def _manifest_of(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        return handle.read()


def test_data_after_the_end_of_the_archive_is_refused() -> None:
    body = gzip.decompress(GOOD)
    with pytest.raises(BundleError, match="data after the end of the archive"):
        read_bundle(gzip.compress(body + b"#!/bin/sh\n"))
    with pytest.raises(BundleError, match="data after the end of the archive"):
        read_bundle(body + b"\0" * 20_000 + b"x")  # uncompressed, past the record padding
    assert read_bundle(gzip.compress(body)).files == read_bundle(GOOD).files  # zero padding alone is fine


def test_gzip_garbage_after_the_trailer_is_refused() -> None:
    with pytest.raises(BundleError):
        read_bundle(GOOD + b"\x1f\x8b garbage")


def test_accept_sees_the_manifest_before_any_file_is_kept_and_can_refuse() -> None:
    seen: list[Manifest] = []

    def refuse(manifest: Manifest) -> None:
        seen.append(manifest)
        raise EdgefleetError("too big for this device")

    with pytest.raises(EdgefleetError, match="too big"):
        read_bundle(GOOD, accept=refuse)
    assert [m.ref for m in seen] == ["digits@1.0.0"]
    assert read_bundle(GOOD, accept=seen.append).manifest == seen[-1]


def test_verify_bundle_checks_the_same_and_keeps_nothing() -> None:
    info = verify_bundle(GOOD)
    bundle = read_bundle(GOOD)
    assert (info.manifest, info.sha256, info.size) == (bundle.manifest, bundle.sha256, bundle.size)
    assert info.sha256 == hashlib.sha256(GOOD).hexdigest() and info.size == len(GOOD)
    assert not hasattr(info, "files")


def test_a_deeply_nested_manifest_is_a_bundle_error() -> None:
    archive = gzip.compress(_member("manifest.json", b"[" * 300_000 + b"]" * 300_000))
    with pytest.raises(BundleError, match="manifest.json"):
        read_bundle(archive)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(["name", "version", "format", "task", "inputs", "outputs", "class_labels", "profiles",
                          "health_check", "runtime", "files", "golden_file", "schema_version", "quantization"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=FIELDS, value=JSON_VALUES)
def test_any_manifest_field_value_gives_a_bundle_or_a_bundle_error(field: str, value: Any) -> None:
    files = bundle_files()
    document = manifest_fields() | {"files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                                              for n, d in files.items()}}
    document[field] = value
    body = _member("manifest.json", json.dumps(document).encode())
    body += b"".join(_member(n, d) for n, d in sorted(files.items())) + bytes(1024)
    try:
        bundle = read_bundle(gzip.compress(body))
    except BundleError:
        return
    assert bundle.manifest == Manifest.from_dict(bundle.manifest.to_dict())
