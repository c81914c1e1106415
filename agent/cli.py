"""``edgefleet agent ...``: enroll, run, status, install, predict.

Registered by edgefleet.cli. Handlers import the runtimes and the daemon lazily, so
``edgefleet --help`` on a device stays fast and ``agent status`` never loads onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from edgefleet import logs
from edgefleet.console import format_kv, print_json, print_table

DEFAULT_STATE_DIR = os.environ.get("EDGEFLEET_STATE_DIR", "/var/lib/edgefleet")

AGENT_HELP = """\
The agent runs on each device. A typical first run:

  edgefleet agent enroll --server http://fleet:8080 --token=TOKEN --state-dir /var/lib/edgefleet
  edgefleet agent run --state-dir /var/lib/edgefleet        # or: systemctl start edgefleet-agent
  curl --unix-socket /var/lib/edgefleet/agent.sock -d '{"inputs": [[...]]}' localhost/v1/models/NAME/predict

Without a server (development): install a bundle file and serve it.

  edgefleet agent install digits-1.0.0.tar.gz --profile rpi4-64 --state-dir ./state
  edgefleet agent run --state-dir ./state --no-mqtt --http-port 8765   # --http-port: also on loopback TCP
  edgefleet agent predict --model digits --input rows.csv --output out.csv --state-dir ./state

The state directory defaults to $EDGEFLEET_STATE_DIR or /var/lib/edgefleet.
"""


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="the agent's state directory (identity, models, socket)")


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="the device agent: enroll, run, status, install, predict",
                           description=AGENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = agent.add_subparsers(dest="agent_command", metavar="ACTION")

    p = asub.add_parser("enroll", help="redeem an enrollment token for this device's identity and trust bundle",
                        description="POST the token to the server, then store identity, MQTT credentials (0600), "
                        "the director key, the firmware profile and the TUF root in the state directory.")
    p.add_argument("--server", required=True, help="fleet server URL, e.g. http://fleet:8080")
    p.add_argument("--token", required=True, help="one-time token from `edgefleet devices enroll` "
                   "(write --token=TOKEN when it starts with '-')")
    p.add_argument("--hostname", help="name reported to the server (default: this machine's hostname)")
    p.add_argument("--force", action="store_true", help="enroll again even if the state directory is enrolled")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _state_arg(p)
    p.set_defaults(handler=_enroll)

    p = asub.add_parser("run", help="run the daemon: serve the active models, keep the MQTT link",
                        description="Load every model's active slot, serve the local API on the Unix socket "
                        "SOCKET_DIR/agent.sock (the state directory unless --socket-dir; 0660, the directory's "
                        "group) and, when asked for, on TCP; connect to the broker in the background (the agent "
                        "serves without one). SIGTERM finishes in-flight requests and exits. Under systemd "
                        "(Type=notify) it reports READY and pings the watchdog.")
    _state_arg(p)
    p.add_argument("--config", help="agent.toml with daemon settings (see docs/agent.md)")
    p.add_argument("--tcp", action="store_true", default=None,
                   help="also serve the local API on TCP (127.0.0.1:8765 unless --http-host/--http-port): "
                   "any local user can then call it")
    p.add_argument("--http-host", help="TCP address for the local API; implies --tcp ('' disables TCP)")
    p.add_argument("--http-port", type=int, help="TCP port for the local API; implies --tcp (0 picks a free one)")
    p.add_argument("--socket-dir", help="directory of the Unix socket, e.g. /run/edgefleet (0750): its group may "
                   "call the API (default: the state directory, this user alone)")
    p.add_argument("--no-socket", action="store_true", help="do not serve on the Unix socket")
    p.add_argument("--no-mqtt", action="store_true", help="do not connect to the broker")
    p.add_argument("--profile", help="firmware profile when the state directory has none (development)")
    p.add_argument("--json", action="store_true",
                   help="report a failure to start (bad config, socket in use) as a JSON problem document")
    p.set_defaults(handler=_run)

    p = asub.add_parser("status", help="what this device runs and how it is",
                        description="Read the state directory (identity, active and previous models) and ask the "
                        "running daemon over its socket for live figures: per model the requests and errors "
                        "(input errors included) since it started serving, p95 latency, the worst drift band "
                        "over the last hour (PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 drift, with the "
                        "feature) and the rolling accuracy of the labels sent to POST /v1/feedback.")
    _state_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_status)

    p = asub.add_parser("install", help="install a bundle file locally (development, air-gapped devices)",
                        description="Check the bundle (schema, sha256 of every file), check it was validated for "
                        "this device's profile, stage it, health-check it on its golden samples and activate it. "
                        "A running daemon is told to serve it.")
    p.add_argument("bundle", help="bundle file (NAME-VERSION.tar.gz)")
    _state_arg(p)
    p.add_argument("--profile", help="firmware profile to record when the device is not enrolled (e.g. rpi4-64)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_install)

    p = asub.add_parser("predict", help="batch prediction over a CSV, NPY or Parquet file",
                        description="Predict every row of --input with the model's active slot, in chunks, into "
                        "--output (CSV, NPY, Parquet or JSONL by extension). Works with the daemon stopped. "
                        "A CSV header row is matched to the model's feature names.")
    p.add_argument("--model", required=True, help="model name (see `edgefleet agent status`)")
    p.add_argument("--input", required=True, help="input file (.csv, .parquet, .npy, .npz) or, for an image model, "
                   "a folder of PNG/JPEG images")
    p.add_argument("--output", required=True, help="output file: .csv, .npy, .parquet or .jsonl")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows per inference call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _state_arg(p)
    p.set_defaults(handler=_predict)

    agent.set_defaults(handler=lambda a: agent.print_help() or 2)


def _state(args: argparse.Namespace) -> Any:
    from agent.state import StateDir

    return StateDir(args.state_dir)


def _profile(state: Any, name: str | None) -> Any:
    from edgefleet.profiles import load_profile

    if state.profile_file.exists():
        return state.profile()
    if name:
        profile = load_profile(name)
        state.ensure().save_profile(profile.to_toml())
        return profile
    return state.profile()  # raises StateError naming the fix


def _enroll(args: argparse.Namespace) -> int:
    from agent.enroll import enroll

    state = _state(args)
    result = enroll(args.server, args.token, state, hostname=args.hostname, force=args.force)
    identity = result.identity
    if args.json:
        print_json({"device_id": identity.device_id, "profile": identity.profile, "state_dir": str(state.path),
                    "broker_url": identity.broker_url, "server_url": identity.server_url})
        return 0
    print(f"enrolled as {identity.device_id} (profile {identity.profile}) in {state.path}")
    print(f"next: edgefleet agent run --state-dir {state.path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.daemon import open_daemon

    state = _state(args)
    profile = _profile(state, args.profile) if args.profile else None
    daemon = open_daemon(args.state_dir, args.config, profile=profile, tcp=args.tcp, http_host=args.http_host,
                         http_port=args.http_port, socket_dir=args.socket_dir,
                         unix_socket=False if args.no_socket else None, mqtt=False if args.no_mqtt else None)
    # agent.toml's log_level, now that it is read (-v and $EDGEFLEET_LOG_LEVEL still win).
    logs.configure(getattr(args, "verbose", 0), level=daemon.config.log_level, log_format=logs.format_flag(args))
    return daemon.run()


def _mqtt_line(mqtt: dict[str, Any]) -> str:
    """``connected (host:port)``, and the refused subscriptions while the broker has not granted both."""
    line = ("connected" if mqtt["connected"] else "disconnected") + f" ({mqtt['broker']})"
    refusals = mqtt.get("suback_refusals") or 0  # absent from a daemon before issue 13
    if mqtt["connected"] and mqtt.get("subscribed") is False and refusals:
        line += f", not subscribed: the broker refused {refusals} SUBACK(s), retrying (docs/agent.md)"
    elif refusals:
        line += f", {refusals} SUBACK refusal(s) since start"
    return line


def _status(args: argparse.Namespace) -> int:
    from agent.client import DaemonUnavailable, request_json
    from agent.errors import AgentError
    from agent.slots import ModelStore

    state = _state(args)
    identity = state.load_identity().to_dict() if state.is_enrolled() else None
    store = ModelStore(state)
    models = []
    for name in store.models():
        entry: dict[str, Any] = {"name": name}
        for which in ("active", "previous"):
            try:
                slot = getattr(store, which)(name, verify=False)
                entry[which] = {"version": slot.version, "sha256": slot.sha256} if slot else None
            except AgentError as exc:
                entry[which] = {"error": str(exc)}
        models.append(entry)
    try:
        _, daemon = request_json(state.socket_path, "GET", "/v1/status", timeout=3.0)
    except DaemonUnavailable as exc:
        daemon = None
        reason = exc.message
    document = {"state_dir": str(state.path), "enrolled": identity is not None, "identity": identity,
                "models": models, "daemon": daemon}
    if args.json:
        print_json(document)
        return 0
    print(format_kv([("state dir", state.path), ("device", identity["device_id"] if identity else "not enrolled"),
                     ("profile", identity["profile"] if identity else None),
                     ("daemon", f"running (pid {daemon['pid']}, up {daemon['uptime_s']}s)" if daemon else f"not running: {reason}"),
                     ("mqtt", _mqtt_line(daemon["mqtt"]) if daemon and daemon["mqtt"]["enabled"]
                      else "off" if daemon else None),
                     ("api", ", ".join(f"{k} {v}" for k, v in daemon["api"].items() if v) if daemon else None)]))
    live = {m["name"]: m for m in (daemon or {}).get("models", [])}
    print()
    print_table(["model", "active", "previous", "serving", "requests", "errors", "p95 ms", "drift", "accuracy"],
                [(m["name"], (m.get("active") or {}).get("version"), (m.get("previous") or {}).get("version"),
                  *_live_columns(live.get(m["name"]))) for m in models])
    _print_stage(daemon, state.update_file)
    telemetry = (daemon or {}).get("telemetry")
    if telemetry and telemetry.get("outbox"):
        outbox = telemetry["outbox"]
        print(f"\ntelemetry: every {telemetry['interval_s']}s, {telemetry['acknowledged']} batches delivered, "
              f"{outbox['rows']} waiting in the outbox ({outbox['bytes']} bytes)"
              + (f", {outbox['dropped_unreported']} dropped over the cap" if outbox["dropped_unreported"] else ""))
    return 0


def _print_stage(daemon: dict[str, Any] | None, update_file: Any) -> None:
    """A candidate's stage (shadow or canary, issue 18): the update state (from update.json when
    no daemon answers) and, from a running daemon, the live figures."""
    update = (daemon or {}).get("update")
    if update is None:
        try:
            update = json.loads(update_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            update = {}
    update = update if isinstance(update, dict) else {}
    if update.get("state") in ("shadow", "canary"):
        print(f"\nstage: {update['state']} of {update.get('model')} {update.get('version')} "
              f"(assignment {update.get('counter')}, rollout {update.get('rollout_id') or '-'})")
    candidates = (daemon or {}).get("candidates") or []
    if not candidates:
        return
    print()
    print_table(["model", "mode", "candidate", "serving", "rate", "compared", "agreed", "agreement", "skipped",
                 "errors", "answered"],
                [(c["model"], c["mode"], c["version"], c["serving"], c.get("sample", c.get("share")),
                  c.get("compared"), c.get("agreed"),
                  f"{c['agreement']:.1%}" if c.get("agreement") is not None else None,
                  c.get("skipped"), c.get("errors"), c.get("requests")) for c in candidates])


def _live_columns(live: dict[str, Any] | None) -> tuple[Any, ...]:
    """serving, requests, errors, p95 ms, drift, accuracy of one model from the daemon's status."""
    if not live:
        return (None, None, None, None, None, None)
    errors = (live.get("errors") or 0) + (live.get("input_errors") or 0)
    p95 = live.get("latency_ms_p95")
    drift = live.get("drift") or {}
    band = (f"{drift['band']} (PSI {drift['max_psi']:.2f} {drift['feature']})" if drift.get("band")
            else f"{drift['rows']} rows, too few" if drift.get("rows") else None)
    accuracy = live.get("accuracy")
    return (live.get("version"), live.get("requests"), errors, round(p95, 3) if p95 is not None else None, band,
            f"{accuracy['accuracy']:.1%} of {accuracy['labels']}" if accuracy else None)


def _install(args: argparse.Namespace) -> int:
    from agent.client import DaemonUnavailable, request_json
    from agent.install import install_bundle

    state = _state(args)
    profile = _profile(state, args.profile)
    result = install_bundle(state, args.bundle, profile)
    try:
        request_json(state.socket_path, "POST", "/v1/reload", {}, timeout=30.0)
        reloaded = True
    except DaemonUnavailable:
        reloaded = False
    if args.json:
        print_json({**result.to_dict(), "daemon_reloaded": reloaded})
        return 0
    health = result.health
    print(f"installed {result.slot.name}@{result.slot.version} ({result.slot.sha256[:12]})"
          + (f", replacing {result.previous_version}" if result.previous_version else ""))
    agreement, p95 = health.get("agreement"), health.get("latency_p95_ms")
    print(f"health check passed: agreement {agreement if agreement is not None else '-'}, "
          f"p95 latency {p95:.3f} ms (budget {health.get('latency_budget_ms')} ms)" if p95 is not None else
          "health check passed")
    print("the running daemon now serves it" if reloaded else "start serving it with: edgefleet agent run")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from agent.batch import predict_file
    from agent.errors import StateError
    from agent.runtime import load_session
    from agent.slots import ModelStore

    state = _state(args)
    slot = ModelStore(state).active(args.model)
    if slot is None:
        raise StateError(f"model {args.model!r} has no active slot in {state.path}",
                         fix="install it (edgefleet agent install BUNDLE) or check `edgefleet agent status`")
    session = load_session(slot, state.profile())
    try:
        summary = predict_file(session, args.input, args.output, chunk_rows=args.chunk_rows,
                               progress=not args.no_progress and not args.json)
    finally:
        session.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        rate = summary.to_dict()["rows_per_s"]
        print(f"{summary.rows} rows predicted with {summary.model}@{summary.version} in {summary.seconds:.2f}s "
              f"({rate} rows/s) -> {summary.output}")
    return 0
