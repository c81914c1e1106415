"""Firmware profiles: the shipped ones load, and a malformed one names file, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.errors import ProfileError
from edgefleet.profiles import all_profiles, load_profile, parse_profile, profile_names

REQUIRED = {"rpi4-64", "rpi5", "rpi-zero-2w", "jetson-nano", "jetson-orin-nano", "generic-x86_64"}


def test_ships_every_required_profile() -> None:
    assert set(profile_names()) >= REQUIRED
    for profile in all_profiles():
        assert profile.latency_budget_ms > 0
        assert profile.default_format in profile.allowed_formats


def test_jetson_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert load_profile("jetson-orin-nano").execution_providers == (
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_round_trips_through_toml() -> None:
    for profile in all_profiles():
        again = parse_profile(profile.to_toml(), f"{profile.name}.toml")
        assert again.to_dict() == profile.to_dict()


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = load_profile("rpi4-64").to_toml().replace(old, new)
    path = tmp_path / "rpi4-64.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "field", "fix"),
    [
        ("cores = 4", "cores = \"four\"", "hardware.cores", "make it a int"),
        ("cores = 4", "", "hardware.cores", "add `cores = ...`"),
        ('preference = "onnxruntime"', 'preference = "tensorrt"', "runtime.preference", "onnxruntime, litert"),
        ("min_agreement = 0.98", "min_agreement = 1.5", "tolerance.min_agreement", "between 0 and 1"),
        ("latency_ms = 25.0", "latency_ms = -1.0", "budget.latency_ms", "positive"),
        ("cores = 4", "cores = 4\ncoers = 4", "hardware.coers", "remove it"),
        ('"XnnpackExecutionProvider", "CPUExecutionProvider"', '"XnnpackExecutionProvider"', "runtime.execution_providers", "CPUExecutionProvider"),
        ('default_format = "onnx"', 'default_format = "tflite"\n', "", ""),
    ],
)
def test_malformed_profile_names_file_field_and_fix(tmp_path: Path, old: str, new: str, field: str, fix: str) -> None:
    path = _broken(tmp_path, old, new)
    if not field:  # a valid variation: tflite is allowed on rpi4-64
        assert load_profile(str(path)).default_format == "tflite"
        return
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert str(path) in message and field in message and fix in message


def test_invalid_toml_is_reported_with_file(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("name = [")
    with pytest.raises(ProfileError, match="x.toml is not valid TOML"):
        load_profile(str(path))


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match="rpi4-64"):
        load_profile("rpi3")


def test_profiles_dir_env_adds_custom_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = load_profile("rpi5").to_toml().replace('name = "rpi5"', 'name = "my-board"')
    (tmp_path / "my-board.toml").write_text(text)
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(tmp_path))
    assert "my-board" in profile_names()
    assert load_profile("my-board").cores == 4
