"""``edgefleet server``, ``edgefleet keys ...``, ``edgefleet models ...`` and ``edgefleet devices ...``.

``server`` and ``keys`` work on the local data directory; ``models`` and ``devices`` talk only
to the REST API through ``fleet_server.cli.client`` (so they work from any machine with the admin
token). Heavy imports (FastAPI, uvicorn, SQLAlchemy, python-tuf) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from edgefleet.console import format_kv, human_bytes, print_json, print_table
from edgefleet.version import parse_model_ref
from fleet_server.errors import ClientError, ConfigError

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``"90"``, ``"15m"``, ``"1h"``, ``"7d"`` -> seconds."""
    match = _TTL.match(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 900, 15m, 1h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def register(sub: Any) -> None:
    _register_server(sub)
    _register_keys(sub)
    client_flags = argparse.ArgumentParser(add_help=False)
    client_flags.add_argument("--server", help="server URL (default: $EDGEFLEET_SERVER, cli.toml, http://127.0.0.1:8080)")
    client_flags.add_argument("--token", help="admin token (default: $EDGEFLEET_TOKEN or token in ~/.config/edgefleet/cli.toml)")
    client_flags.add_argument("--json", action="store_true", help="print JSON for scripts")
    _register_models(sub, client_flags)
    _register_devices(sub, client_flags)


# ------------------------------------------------------------------ server

def _register_server(sub: Any) -> None:
    p = sub.add_parser(
        "server", help="run the fleet server (registry, enrollment, REST API)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the fleet server under uvicorn. With no options it keeps everything in ./edgefleet-data "
                    "(SQLite database, keys, TUF repository), starts an embedded MQTT broker on loopback and "
                    "prints the admin token the first time.",
        epilog="Every flag also reads from $EDGEFLEET_<NAME> (e.g. EDGEFLEET_DATABASE_URL) and from the config file.\n"
               "examples:\n  edgefleet server\n"
               "  edgefleet server --database postgresql://edgefleet@db/edgefleet --broker mqtt://broker:1883 "
               "--host 0.0.0.0\n  edgefleet server --config /etc/edgefleet/server.toml")
    p.add_argument("--config", type=Path, help="TOML config file (keys as in docs/server.md)")
    p.add_argument("--data-dir", type=Path, help="where the database, keys and TUF repository live (default ./edgefleet-data)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument("--database", dest="database_url", help="database URL (default: SQLite in the data dir)")
    p.add_argument("--broker", dest="broker_url", help="MQTT broker URL mqtt[s]://HOST:PORT (default: embedded broker)")
    p.add_argument("--public-url", help="the URL devices use to reach this server")
    p.add_argument("--broker-public-url", help="the broker URL devices are given (default: --broker)")
    p.add_argument("--broker-ca-file", type=Path, help="CA bundle to verify an mqtts:// broker (default: system CAs)")
    p.add_argument("--mosquitto-dir", type=Path, help="write Mosquitto's password and ACL files here")
    p.add_argument("--mosquitto-pid-file", type=Path, help="SIGHUP this Mosquitto after writing its files")
    # Checked by ServerConfig (fleet_server.config.BROKER_ACCOUNTS), not here: the CLI stays light.
    p.add_argument("--broker-accounts", metavar="BACKEND",
                   help="who keeps the devices' broker accounts: mosquitto-files, mosquitto-dynsec, mosquitto-http "
                        "or unmanaged (docs/deployment.md \"Broker accounts\"; default: mosquitto-files with "
                        "--mosquitto-dir, else unmanaged)")
    p.add_argument("--private-targets", action="store_true", default=None,
                   help="confidential models: serve /tuf/targets/ to enrolled devices only (docs/security.md)")
    p.add_argument("--init-only", action="store_true",
                   help="create what a first start creates (database, keys, TUF repository, admin token, "
                        "Mosquitto's passwd and acl) and exit: run once at install so Mosquitto can start first")
    p.set_defaults(handler=_server)


def _server_config(args: argparse.Namespace, names: tuple[str, ...]) -> Any:
    from fleet_server.config import load_config

    flags = {n: getattr(args, n, None) for n in names}
    return load_config(flags, config_file=getattr(args, "config", None))


def _server(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from fleet_server.app import create_app

    config = _server_config(args, ("data_dir", "host", "port", "database_url", "broker_url", "public_url",
                                   "broker_public_url", "broker_ca_file", "mosquitto_dir", "mosquitto_pid_file",
                                   "private_targets", "broker_accounts"))
    # The server tells what it does at INFO even without -v; uvicorn's start-up lines too, and its
    # access log only with -v (its loggers have no level of their own: log_level=None below).
    for name in ("fleet_server", "uvicorn.error"):
        logging.getLogger(name).setLevel(min(logging.getLogger().level, logging.INFO))
    app = create_app(config)
    ctx = app.state.ctx
    if getattr(args, "init_only", False):
        _report_first_start(ctx, config)
        ctx.close()
        print(f"initialised {config.data_dir}" + (f" and the Mosquitto files in {config.mosquitto_dir}"
                                                  if config.mosquitto_dir else ""), file=sys.stderr)
        return 0
    _report_first_start(ctx, config)
    print(format_kv(ctx.describe()), file=sys.stderr)
    # log_config=None: uvicorn's loggers propagate to edgefleet's one handler (edgefleet.logs), in
    # its format, instead of uvicorn printing "INFO:     ..." lines of its own.
    uvicorn.run(app, host=config.host, port=config.port, log_config=None, log_level=None)
    return 0


def _report_first_start(ctx: Any, config: Any) -> None:
    for warning in ctx.key_warnings:
        print(f"\n!!! WARNING: {warning}\n", file=sys.stderr)
    if ctx.admin_token.created:
        print(f"admin token (shown once; also in {config.admin_token_file}, mode 0600):\n\n    {ctx.admin_token.value}\n\n"
              f"use it with: export EDGEFLEET_TOKEN={ctx.admin_token.value}", file=sys.stderr)
    if getattr(ctx, "broker_auth_token_created", False):
        print(f"broker-auth token created in {config.broker_auth_token_file} (mode 0600): copy it to the broker "
              "host for the edgefleet Mosquitto plugin (python -m fleet_server.broker.plugin conf --token-file ...; "
              "docs/deployment.md)", file=sys.stderr)


# -------------------------------------------------------------------- keys

def _register_keys(sub: Any) -> None:
    p = sub.add_parser("keys", help="create and rotate the server's signing keys (local, on the data dir)",
                       description="TUF root keys (offline), the online TUF keys and the director key that signs "
                                   "assignments. `edgefleet server` runs `keys init` itself on first start.")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="server config file (for its data_dir)")
    common.add_argument("--data-dir", type=Path, help="the server's data directory (default ./edgefleet-data)")
    common.add_argument("--root-keys-dir", type=Path, help="where the root keys are (default DATA_DIR/offline-root-keys)")
    common.add_argument("--json", action="store_true", help="print JSON")
    init = ksub.add_parser("init", parents=[common], help="create root, online and director keys and the TUF repository",
                           description="Create N root keys with a threshold (keep them OFFLINE afterwards), the online "
                                       "targets/snapshot/timestamp keys, the director key, and TUF root version 1.")
    init.add_argument("--root-threshold", type=int, default=1, help="root signatures needed for a new root")
    init.add_argument("--root-keys", type=int, default=1, help="how many root keys to create")
    init.set_defaults(handler=_keys_init)
    rotate = ksub.add_parser("rotate-root", parents=[common], help="publish a new root version with new root keys",
                             description="Sign root N+1 with a threshold of the current root keys and with new ones; "
                                         "devices follow the chain through TUF. Needs the current root keys mounted.")
    rotate.add_argument("--root-threshold", type=int, default=1, help="threshold of the new root")
    rotate.add_argument("--root-keys", type=int, default=1, help="how many new root keys")
    rotate.set_defaults(handler=_keys_rotate)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _keys_init(args: argparse.Namespace) -> int:
    from fleet_server.trust.keys import KeyStore, init_keys
    from fleet_server.trust.tuf_repo import TufRepository

    config = _server_config(args, ("data_dir",))
    root_dir = args.root_keys_dir or config.root_keys_dir
    summary = init_keys(config.keys_dir, root_dir, root_threshold=args.root_threshold, root_key_count=args.root_keys)
    repo = TufRepository.create(config.tuf_dir, KeyStore.load(config.keys_dir), root_dir)
    result = {**summary.to_dict(), "tuf_dir": str(config.tuf_dir), "root_version": repo.root_version()}
    if args.json:
        print_json(result)
        return 0
    print(format_kv([("online keys", config.keys_dir), ("root keys", root_dir),
                     ("root threshold", f"{summary.root_threshold} of {len(summary.root_keyids)}"),
                     ("director key id", summary.director_keyid), ("TUF repository", config.tuf_dir)]))
    for warning in summary.warnings:
        print(f"\n!!! WARNING: {warning}", file=sys.stderr)
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    from fleet_server.trust.keys import KeyStore
    from fleet_server.trust.rotation import rotate_root
    from fleet_server.trust.tuf_repo import TufRepository

    config = _server_config(args, ("data_dir",))
    root_dir = args.root_keys_dir or config.root_keys_dir
    if not (config.tuf_dir / "metadata").is_dir():
        raise ConfigError(f"no TUF repository in {config.tuf_dir}", fix="run `edgefleet keys init` or start the server once")
    repo = TufRepository(config.tuf_dir, KeyStore.load(config.keys_dir))
    version = rotate_root(config.keys_dir, root_dir, repo, new_root_key_count=args.root_keys,
                          new_threshold=args.root_threshold)
    if args.json:
        print_json({"root_version": version, "root_keys_dir": str(root_dir)})
    else:
        print(f"published TUF root version {version}; the old root keys moved to {root_dir / 'retired'}.\n"
              f"Move the new root keys in {root_dir} offline.")
    return 0


# ------------------------------------------------------------------ models

def _client(args: argparse.Namespace) -> Any:
    from fleet_server.cli.client import AdminClient, resolve_client_settings

    return AdminClient(resolve_client_settings(args.server, args.token))


def _register_models(sub: Any, client_flags: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", help="publish and list model versions on the server",
                       description="The model registry: every version is a signed TUF target. Talks to the server's "
                                   "REST API with the admin token.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    push = msub.add_parser("push", parents=[client_flags], help="upload a bundle made by `edgefleet convert`",
                           description="Upload and publish a bundle. The same name+version can only ever hold the "
                                       "same bytes: pushing identical bytes again is a no-op, different bytes are refused.")
    push.add_argument("bundle", type=Path, help="bundle file, NAME-VERSION.tar.gz")
    push.set_defaults(handler=_models_push)
    lst = msub.add_parser("list", parents=[client_flags], help="one line per model version")
    lst.add_argument("--name", help="only this model")
    lst.set_defaults(handler=_models_list)
    show = msub.add_parser("show", parents=[client_flags], help="one version with its manifest")
    show.add_argument("ref", help="NAME@VERSION, e.g. digits@1.0.0")
    show.set_defaults(handler=_models_show)
    yank = msub.add_parser("yank", parents=[client_flags], help="never assign this version again",
                           description="Yank a version: rollouts can no longer assign it. Devices running it keep it "
                                       "until they are assigned another version.")
    yank.add_argument("ref", help="NAME@VERSION")
    yank.set_defaults(handler=_models_yank)
    drift = msub.add_parser(
        "drift", parents=[client_flags], help="per-feature drift of a version, merged over the fleet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Add up the reference-bin counts the devices sent over the window and score each feature\n"
                    "against the bundle's reference: PSI (<0.1 stable, 0.1-0.25 moderate, >0.25 drift),\n"
                    "Jensen-Shannon and Hellinger (both 0-1). Also shows requests, error rate and accuracy\n"
                    "(from feedback) per version of the model.",
        epilog="examples:\n  edgefleet models drift digits@1.0.0\n  edgefleet models drift digits@1.0.0 --by label:site\n"
               "  edgefleet models drift digits@1.0.0 --by profile --window 24h --json")
    drift.add_argument("ref", help="NAME@VERSION")
    drift.add_argument("--by", help="group devices: profile, or label:NAME (e.g. label:site); default the whole fleet")
    drift.add_argument("--window", type=parse_ttl, help="how far back: 900, 15m, 1h, 7d (default: the server's, 1h)")
    drift.add_argument("--all", action="store_true", help="list every feature, not only the 20 that drift most")
    drift.set_defaults(handler=_models_drift)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _model_rows(models: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(m["name"], m["version"], human_bytes(m["length"]), m["sha256"][:12], ",".join(m["profiles"]),
             "yes" if m["yanked"] else "", m["created_at"]) for m in models]


_MODEL_HEADERS = ["name", "version", "size", "sha256", "profiles", "yanked", "created"]


def _models_push(args: argparse.Namespace) -> int:
    from edgefleet.console import Progress

    # edgefleet.console.Progress draws only on a terminal: --json and redirected stderr stay quiet.
    with Progress(f"pushing {Path(args.bundle).name}", None, enabled=not args.json) as bar, _client(args) as client:
        def sent(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.done)

        result = client.push_model(args.bundle, progress=sent if bar.enabled else None)
    if args.json:
        print_json(result)
    else:
        verb = "published" if result["created"] else "already published (identical bytes)"
        print(f"{result['name']}@{result['version']} {verb}: target {result['target_path']}, sha256 {result['sha256']}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models(args.name)
    if args.json:
        print_json(models)
    else:
        print_table(_MODEL_HEADERS, _model_rows(models))
    return 0


def _ref(text: str) -> tuple[str, str]:
    try:
        return parse_model_ref(text)
    except Exception as exc:
        raise ClientError(str(exc), fix="write it as NAME@VERSION, e.g. digits@1.0.0") from exc


def _models_show(args: argparse.Namespace) -> int:
    name, version = _ref(args.ref)
    with _client(args) as client:
        model = client.show_model(name, version)
    if args.json:
        print_json(model)
        return 0
    manifest = model.get("manifest", {})
    print(format_kv([("model", f"{model['name']}@{model['version']}"), ("target", model["target_path"]),
                     ("sha256", model["sha256"]), ("size", human_bytes(model["length"])),
                     ("profiles", model["profiles"]), ("yanked", model["yanked"]), ("created", model["created_at"]),
                     ("format", manifest.get("format")), ("task", manifest.get("task")),
                     ("quantization", manifest.get("quantization"))]))
    return 0


def _models_yank(args: argparse.Namespace) -> int:
    name, version = _ref(args.ref)
    with _client(args) as client:
        model = client.yank_model(name, version)
    if args.json:
        print_json(model)
    else:
        print(f"{model['name']}@{model['version']} is yanked: it will not be assigned again")
    return 0


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none in the window"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _models_drift(args: argparse.Namespace) -> int:
    name, version = _ref(args.ref)
    with _client(args) as client:
        view = client.model_drift(name, version, by=args.by, window_s=args.window)
    if args.json:
        print_json(view)
        return 0
    print(f"{view['model']}@{view['version']} since {view['since']} (window {view['window_s']:.0f} s, by {view['by']})")
    for group in view["groups"]:
        print(f"\n{group['group']}: {group['devices']} device(s), band {group['band']}, max PSI {group['max_psi']:.3f}, "
              f"{group['requests']} requests, accuracy {_num(group['accuracy'])}")
        print(f"  newest batch {_age(group.get('age_s'))}, newest feature counts {_age(group.get('features_age_s'))}")
        features = sorted(group["features"], key=lambda f: -f["psi"])
        shown = features if args.all else features[:20]
        rows = [(f["feature"], f["rows"], f"{f['psi']:.4f}", f"{f['js']:.4f}", f"{f['hellinger']:.4f}", f["band"])
                for f in shown]
        if group.get("output"):
            o = group["output"]
            rows.append(("(output)", o["rows"], f"{o['psi']:.4f}", f"{o['js']:.4f}", f"{o['hellinger']:.4f}", o["band"]))
        print_table(["feature", "rows", "psi", "js", "hellinger", "band"], rows)
        if len(features) > len(shown):
            print(f"... {len(features) - len(shown)} more stable features (--all lists them)")
    if view["versions"]:
        print("\nby version:")
        print_table(["version", "devices", "requests", "error rate", "labels", "accuracy"],
                    [(v["version"], v["devices"], v["requests"], _num(v["error_rate"], 4), v["labels"],
                      _num(v["accuracy"])) for v in view["versions"]])
    return 0


# ----------------------------------------------------------------- devices

def _register_devices(sub: Any, client_flags: argparse.ArgumentParser) -> None:
    p = sub.add_parser("devices", help="enroll, list, label and revoke devices",
                       description="Devices enroll with a one-time token and get their own MQTT credentials. "
                                   "Talks to the server's REST API with the admin token.")
    dsub = p.add_subparsers(dest="devices_command", metavar="ACTION")
    enroll = dsub.add_parser("enroll", parents=[client_flags], help="create a one-time enrollment token",
                             description="Create a one-time, expiring enrollment token and print the command to run "
                                         "on the device.",
                             epilog="example: edgefleet devices enroll --profile rpi4-64 --label site=berlin --ttl 1h")
    enroll.add_argument("--profile", required=True, help="firmware profile of the device (see `edgefleet profiles list`)")
    enroll.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    enroll.add_argument("--ttl", type=parse_ttl, help="how long the token is valid: 900, 15m, 1h, 7d (default: server's)")
    enroll.set_defaults(handler=_devices_enroll)
    lst = dsub.add_parser("list", parents=[client_flags], help="one line per device")
    lst.add_argument("--status", choices=["enrolled", "revoked"], help="only devices in this state")
    lst.set_defaults(handler=_devices_list)
    show = dsub.add_parser("show", parents=[client_flags], help="everything the server knows about a device")
    show.add_argument("device_id")
    show.set_defaults(handler=_devices_show)
    label = dsub.add_parser("label", parents=[client_flags], help="set or remove labels",
                            description="Set labels with KEY=VALUE; remove one with KEY- .",
                            epilog="example: edgefleet devices label dev-3f2a9c01b2d4 ring=canary site-")
    label.add_argument("device_id")
    label.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
    label.set_defaults(handler=_devices_label)
    revoke = dsub.add_parser("revoke", parents=[client_flags], help="revoke a device's credentials",
                             description="Revoke a device: its API token stops working and it is removed from the "
                                         "broker's password and ACL files (the broker reloads them).")
    revoke.add_argument("device_id")
    revoke.set_defaults(handler=_devices_revoke)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _labels(items: list[str]) -> dict[str, str]:
    from fleet_server.credentials import parse_label_args

    try:
        return parse_label_args(items)
    except ValueError as exc:
        raise ClientError(str(exc), fix="write labels as KEY=VALUE, e.g. --label site=berlin") from exc


def _devices_enroll(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    with _client(args) as client:
        token = client.create_enrollment_token(args.profile, labels, args.ttl)
    if args.json:
        print_json(token)
        return 0
    print(f"enrollment token for a {token['profile']} device (one use, expires {token['expires_at']}):\n\n"
          f"    {token['token']}\n\non the device run:\n\n    {token['agent_command']}")
    return 0


def _device_rows(devices: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    def labels(d: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items()))

    def versions(d: dict[str, Any]) -> str:
        return ",".join(f"{n}@{v}" for n, v in sorted((d.get("versions") or {}).items())) or "-"

    return [(d["id"], d["profile"], d.get("state") or ("online" if d["online"] else "offline"), versions(d),
             d["last_seen"] or "-", _num(d.get("p95_ms")), d.get("drift_band") or "-", labels(d))
            for d in devices]


def _devices_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        devices = client.list_devices(args.status)
    if args.json:
        print_json(devices)
    else:
        print_table(["id", "profile", "state", "versions", "last seen", "p95 ms", "drift", "labels"],
                    _device_rows(devices))
        troubled = [d["id"] for d in devices if d.get("problems")]
        if troubled:
            print(f"\n{len(troubled)} device(s) sent data the fleet views skipped ({', '.join(troubled[:3])}"
                  f"{', ...' if len(troubled) > 3 else ''}): `edgefleet devices show ID` says what", file=sys.stderr)
    return 0


def _reported_versions(device: dict[str, Any]) -> list[str]:
    """NAME@VERSION per model: the server's ``versions`` column, else read from ``reported`` leniently
    (an older server's answer; a ``models`` of another shape shows nothing rather than a traceback)."""
    versions = device.get("versions")
    if not isinstance(versions, dict):
        reported = device.get("reported")
        models = reported.get("models") if isinstance(reported, dict) else None
        versions = {n: m.get("version") for n, m in models.items() if isinstance(m, dict)} \
            if isinstance(models, dict) else {}
    return [f"{n}@{v}" for n, v in sorted(versions.items())]


def _print_device(device: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(device)
        return
    labels = device.get("labels")
    print(format_kv([("id", device.get("id")), ("profile", device.get("profile")), ("status", device.get("status")),
                     ("state", device.get("state")), ("online", device.get("online")),
                     ("last seen", device.get("last_seen")),
                     ("labels", [f"{k}={v}" for k, v in sorted(labels.items())] if isinstance(labels, dict) else []),
                     ("hostname", device.get("hostname")), ("agent version", device.get("agent_version")),
                     ("enrolled", device.get("enrolled_at")), ("revoked", device.get("revoked_at")),
                     ("models", _reported_versions(device)), ("p95 ms", device.get("p95_ms")),
                     ("drift", device.get("drift_band"))]))
    problems = device.get("problems")
    if isinstance(problems, list) and problems:
        print("problems (data of this device the fleet views skipped):")
        for line in problems:
            print(f"  - {line}")


def _devices_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_device(client.show_device(args.device_id), args.json)
    return 0


def _devices_label(args: argparse.Namespace) -> int:
    changes: dict[str, str | None] = {}
    for item in args.changes:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
        else:
            changes.update(_labels([item]))
    with _client(args) as client:
        _print_device(client.label_device(args.device_id, changes), args.json)
    return 0


def _devices_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        device = client.revoke_device(args.device_id)
    if args.json:
        print_json(device)
    else:
        print(f"{device['id']} is revoked: its token no longer works and the broker no longer accepts it")
    return 0
