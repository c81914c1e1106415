"""A hostile bundle costs the real CLIs no memory before it is refused (issue 14).

Each command runs as a user types it, in its own process; its peak RSS (exact, from wait4;
psutil samples beside it) is compared with the same command's peak on a small truncated
bundle, which it refuses after the same imports. The bound is issue 14's: 64 MB above that.
Before the streaming reader, the 509 KiB bomb took both commands to 1.2 GB.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgefleet.bundle import build_bundle_bytes
from edgefleet.canonical import pretty_json
from tests.integration.hostile.bombs import (
    BOMB_MEMBER_BYTES,
    spaces_sha256,
    write_archive,
    write_gzip_bomb,
)
from tests.integration.hostile.memory import MIB, Measured, run_cli
from tests.unit.core.helpers import bundle_files, manifest_fields

BOUND = 64 * MIB


def _huge_model_bundle(path: Path, *, honest: bool) -> Path:
    """A bundle whose manifest lists a 512 MiB model.onnx of spaces: with its true sha256 when
    ``honest`` (a valid bundle, just far too big for the device), else with another one."""
    files = bundle_files()
    listed = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()}
    listed["model.onnx"] = {"sha256": spaces_sha256(BOMB_MEMBER_BYTES) if honest else "0" * 64,
                            "size": BOMB_MEMBER_BYTES}
    manifest = pretty_json(manifest_fields(profiles=["rpi4-64", "generic-x86_64"]) | {"files": listed})
    return write_archive(path, [("manifest.json", manifest), ("golden.json", files["golden.json"]),
                                ("model.onnx", BOMB_MEMBER_BYTES), ("reference.json", files["reference.json"])])


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archives")
    good = build_bundle_bytes(manifest_fields(profiles=["rpi4-64"]), bundle_files())
    (root / "truncated.tar.gz").write_bytes(good[:-40])
    (root / "good.tar.gz").write_bytes(good)
    return {"truncated": root / "truncated.tar.gz", "good": root / "good.tar.gz",
            "bomb": write_gzip_bomb(root / "bomb.tar.gz"),
            "huge": _huge_model_bundle(root / "huge.tar.gz", honest=True),
            "tampered": _huge_model_bundle(root / "tampered.tar.gz", honest=False)}


def _refused(run: Measured, baseline: Measured, words: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and run.stderr.startswith("edgefleet: error:"), run.stderr
    assert words in run.stderr, run.stderr
    _within_bound(run, baseline)


def _within_bound(run: Measured, baseline: Measured) -> None:
    growth = max(run.peak_rss, run.sampled_rss) - baseline.peak_rss
    assert growth < BOUND, (f"grew {growth / MIB:.1f} MiB over the baseline's {baseline.peak_rss / MIB:.1f} MiB "
                            f"(peak {run.peak_rss / MIB:.1f} MiB exact, {run.sampled_rss / MIB:.1f} MiB sampled)")


def test_bundle_inspect_refuses_the_gzip_bomb_within_64_mb(archives: dict[str, Path]) -> None:
    assert archives["bomb"].stat().st_size < 520 * 1024  # 509 KiB holding 512 MiB
    baseline = run_cli(["bundle", "inspect", str(archives["truncated"])])
    assert baseline.returncode == 1 and "truncated" in baseline.stderr, baseline.stderr
    _refused(run_cli(["bundle", "inspect", str(archives["bomb"])]), baseline,
             "manifest.json claims 536870912 bytes, over the 1048576-byte limit")
    # A member whose content is not what the manifest says is hashed as it streams, never held.
    _refused(run_cli(["bundle", "inspect", str(archives["tampered"])]), baseline,
             "model.onnx does not match its sha256 in the manifest")
    # A valid bundle with a 512 MiB model is shown, and inspecting it holds none of it either.
    huge = run_cli(["bundle", "inspect", "--json", str(archives["huge"])])
    assert huge.returncode == 0, huge.stderr
    assert json.loads(huge.stdout)["manifest"]["files"]["model.onnx"]["size"] == BOMB_MEMBER_BYTES
    _within_bound(huge, baseline)


def test_agent_install_refuses_the_gzip_bomb_within_64_mb(archives: dict[str, Path], tmp_path: Path) -> None:
    def install(name: str, profile: str = "rpi4-64") -> Measured:
        return run_cli(["agent", "install", str(archives[name]), "--state-dir", str(tmp_path / f"{name}-{profile}"),
                        "--profile", profile])

    baseline = install("truncated")
    assert baseline.returncode == 1 and "truncated" in baseline.stderr, baseline.stderr
    _refused(install("bomb"), baseline, "manifest.json claims 536870912 bytes, over the 1048576-byte limit")
    # Both refused on their manifests, before the 512 MiB model is even decompressed: over an
    # rpi4-64's storage budget, and over a generic-x86_64's model size limit.
    _refused(install("tampered"), baseline, "over the 500000000-byte limit")
    _refused(install("huge", "generic-x86_64"), baseline, "over profile generic-x86_64's limit of 500000000")
    assert not list(tmp_path.glob("**/model.onnx"))
