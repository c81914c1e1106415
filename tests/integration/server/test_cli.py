"""The admin CLI end to end: `edgefleet models ...` and `edgefleet devices ...` against a running server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from edgefleet.cli import main
from tests.integration.server.harness import RunningServer, make_bundle, server_config


@pytest.fixture
def server(tmp_path: Path) -> RunningServer:
    config = server_config(tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite")
    with RunningServer(config, mqtt=False) as running:
        yield running


def run(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str, token: str = "test-admin-token") -> tuple[int, str, str]:
    code = main([*argv, "--server", server.url, "--token", token])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str) -> object:
    code, out, err = run(capsys, server, *argv, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_models_push_list_show_yank(capsys: pytest.CaptureFixture[str], server: RunningServer, tmp_path: Path) -> None:
    bundle = tmp_path / "digits-1.0.0.tar.gz"
    bundle.write_bytes(make_bundle("digits", "1.0.0"))
    code, out, _ = run(capsys, server, "models", "push", str(bundle))
    assert code == 0 and "digits@1.0.0 published" in out
    code, out, _ = run(capsys, server, "models", "push", str(bundle))
    assert code == 0 and "already published" in out
    code, out, _ = run(capsys, server, "models", "list")
    assert code == 0 and "digits" in out and "1.0.0" in out
    listed = run_json(capsys, server, "models", "list")
    assert isinstance(listed, list) and listed[0]["target_path"] == "digits/digits-1.0.0.tar.gz"
    shown = run_json(capsys, server, "models", "show", "digits@1.0.0")
    assert isinstance(shown, dict) and shown["manifest"]["format"] == "onnx"
    yanked = run_json(capsys, server, "models", "yank", "digits@1.0.0")
    assert isinstance(yanked, dict) and yanked["yanked"] is True
    other = tmp_path / "other.tar.gz"
    other.write_bytes(make_bundle("digits", "1.0.0", seed=3))
    code, _, err = run(capsys, server, "models", "push", str(other))
    assert code == 1 and "different bytes" in err and err.count("\n") == 1


def test_devices_enroll_list_label_revoke(capsys: pytest.CaptureFixture[str], server: RunningServer) -> None:
    code, out, _ = run(capsys, server, "devices", "enroll", "--profile", "rpi4-64", "--label", "site=a", "--ttl", "1h")
    assert code == 0 and f"edgefleet agent enroll --server {server.url} --token" in out
    token = run_json(capsys, server, "devices", "enroll", "--profile", "rpi5")
    assert isinstance(token, dict)
    grant = httpx.post(f"{server.url}/api/v1/enroll", json={"token": token["token"]}).json()
    device_id = grant["device_id"]
    code, out, _ = run(capsys, server, "devices", "list")
    assert code == 0 and device_id in out and "rpi5" in out
    labelled = run_json(capsys, server, "devices", "label", device_id, "ring=canary", "site=b")
    assert isinstance(labelled, dict) and labelled["labels"] == {"ring": "canary", "site": "b"}
    labelled = run_json(capsys, server, "devices", "label", device_id, "site-")
    assert isinstance(labelled, dict) and labelled["labels"] == {"ring": "canary"}
    code, out, _ = run(capsys, server, "devices", "show", device_id)
    assert code == 0 and "ring=canary" in out
    code, out, _ = run(capsys, server, "devices", "revoke", device_id)
    assert code == 0 and "revoked" in out
    revoked = run_json(capsys, server, "devices", "list", "--status", "revoked")
    assert isinstance(revoked, list) and [d["id"] for d in revoked] == [device_id]


def test_clear_errors(capsys: pytest.CaptureFixture[str], server: RunningServer) -> None:
    code, _, err = run(capsys, server, "models", "list", token="wrong")
    assert code == 1 and "refused the admin token" in err
    code, _, err = run(capsys, server, "devices", "enroll", "--profile", "no-such-board")
    assert code == 1 and "no firmware profile named 'no-such-board'" in err
    code = main(["models", "list", "--server", "http://127.0.0.1:9", "--token", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the edgefleet server at http://127.0.0.1:9" in err


def test_keys_init_with_a_root_threshold_then_the_server_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from fleet_server.app import create_app

    data, root_keys = tmp_path / "data", tmp_path / "usb-stick"
    code = main(["keys", "init", "--data-dir", str(data), "--root-keys", "3", "--root-threshold", "2",
                 "--root-keys-dir", str(root_keys), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["root_threshold"] == 2 and len(summary["root_keyids"]) == 3
    assert len(list(root_keys.glob("*.pem"))) == 3 and not (data / "offline-root-keys").exists()
    # The server starts on these keys without the (offline) root keys and serves root v1 with threshold 2.
    ctx = create_app(server_config(data), mqtt=False).state.ctx
    root = json.loads(ctx.repo.root_json())
    assert root["signed"]["roles"]["root"]["threshold"] == 2 and not ctx.keys_created
    ctx.close()
    assert main(["keys", "init", "--data-dir", str(data), "--root-keys-dir", str(root_keys)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
