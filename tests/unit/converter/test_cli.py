"""``edgefleet convert`` end to end, in process: exit codes, JSON and table output, --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter import ExampleFiles
from edgefleet.bundle import read_bundle
from edgefleet.cli import main
from edgefleet.profiles import load_profile


def _args(files: ExampleFiles, out: Path, *extra: str) -> list[str]:
    return ["convert", str(files.model_path), "--profile", "rpi4-64", "--name", "digits", "--version", "1.2.3",
            "--calibration", str(files.calibration_csv), "--validation", str(files.validation_csv),
            "--labels", files.labels_column, "-o", str(out), *extra]


def test_json_report_and_exactly_one_bundle(tmp_path: Path, digits: ExampleFiles,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(digits, tmp_path, "--json")) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["quantization"] == "int8-static" and report["format"] == "onnx"  # rpi4-64's defaults
    assert report["passed"] is True and report["agreement"] >= 0.99
    assert set(report["latency"]) == {"original", "converted"} and report["latency"]["converted"]["p50_ms"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["digits-1.2.3.tar.gz"]
    assert read_bundle(tmp_path / "digits-1.2.3.tar.gz").sha256 == report["sha256"]


def test_table_report(tmp_path: Path, digits: ExampleFiles, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(digits, tmp_path, "--quantize", "int8-dynamic")) == 0
    out = capsys.readouterr().out
    assert "agreement" in out and "passed" in out and "host latency" in out and "int8-dynamic" in out


def test_missed_tolerance_exits_non_zero_and_writes_nothing(tmp_path: Path, digits: ExampleFiles,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = load_profile("rpi4-64").to_toml().replace('name = "rpi4-64"', 'name = "tiny"')
    (profiles / "tiny.toml").write_text(text.replace("max_model_bytes = 50000000", "max_model_bytes = 1000"))
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(profiles))
    out = tmp_path / "out"
    args = _args(digits, out, "--json")
    args[args.index("rpi4-64")] = "tiny"
    assert main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["passed"] is False
    assert "max_model_bytes 1000" in captured.err and "--force" in captured.err
    assert not out.exists() or not any(out.iterdir())
    assert main([*args, "--force"]) == 0
    assert (out / "digits-1.2.3.tar.gz").exists()


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for needle in ("int8-static", "--calibration", "examples:", "trust"):
        assert needle in out


def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", str(tmp_path / "missing.joblib"), "--profile", "rpi4-64", "--name", "m",
                 "--version", "1.0.0", "-o", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: model file") and "does not exist" in err


def test_format_report_of_a_failed_conversion_lists_the_failures() -> None:
    from converter.report import format_report

    text = format_report({"rows": 10, "data": "synthesized", "size_before": 2048, "size_after": 1024,
                          "size_ratio": 0.5, "agreement": 0.5, "passed": False,
                          "failures": ["top-1 agreement 0.5000 is below the profile's min_agreement 0.98"]})
    assert "(not written)" in text and "1.0 KiB (50.0%)" in text
    assert "FAILED: top-1 agreement 0.5000" in text and "host latency" not in text
