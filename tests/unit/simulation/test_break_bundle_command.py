"""``edgefleet break-bundle``: the walkthrough's broken release made with the installed CLI (issue 17).

The copy must install nowhere: a real ``edgefleet agent install`` health-checks it on its golden
samples and refuses it, while the good bundle it came from installs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.bundle import read_bundle
from edgefleet.cli import main
from tests.support.bundles import make_onnx_bundle


def test_break_bundle_writes_a_version_the_health_check_refuses(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    good = make_onnx_bundle(tmp_path / "dist", name="digits", version="1.0.0", profile="generic-x86_64")
    assert main(["break-bundle", str(good), "--version", "2.0.0", "-o", str(tmp_path / "dist")]) == 0
    broken = Path(capsys.readouterr().out.strip())
    assert broken == tmp_path / "dist" / "digits-2.0.0.tar.gz"
    assert read_bundle(broken).manifest.version == "2.0.0"

    state = str(tmp_path / "device")
    assert main(["agent", "install", str(good), "--state-dir", state, "--profile", "generic-x86_64"]) == 0
    capsys.readouterr()
    assert main(["agent", "install", str(broken), "--state-dir", state]) == 1
    err = capsys.readouterr().err
    assert "health" in err.lower() and "Traceback" not in err


def test_break_bundle_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["break-bundle", str(tmp_path / "nope.tar.gz"), "--version", "2.0.0"]) == 1
    assert "does not exist" in capsys.readouterr().err
    good = make_onnx_bundle(tmp_path, name="digits", version="1.0.0", profile="generic-x86_64")
    assert main(["break-bundle", str(good), "--version", "two"]) == 1
    assert "not a semantic version" in capsys.readouterr().err
