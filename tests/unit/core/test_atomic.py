"""Atomic writes: a reader sees the old file or the new one, and a failed write leaves no debris."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.atomic import atomic_copy, atomic_write_bytes, atomic_write_json


def test_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"a": 1}, mode=0o600)
    atomic_write_json(target, {"a": 2}, mode=0o600)
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_copy_streams_large_file(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(bytes(range(256)) * 20_000)
    atomic_copy(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
