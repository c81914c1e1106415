"""``edgefleet rollouts create|status|list|pause|resume|abort|rollback``: the rollout admin commands.

Every command talks only to the server's REST API (``fleet_server.cli.client.AdminClient``), so
it works from any machine that has the admin token. ``status --watch`` redraws a per-wave
progress view until the rollout finishes, and exits 0 only if it completed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from edgefleet.console import format_kv, format_table, print_json, print_table
from edgefleet.version import parse_model_ref
from fleet_server.errors import NotFoundError

LIVE = ("pending", "running", "paused")

_CREATE_EPILOG = """\
examples:
  edgefleet rollouts create digits@1.2.0 --selector 'site=berlin' --waves 1,10,50,100 --bake 10m
  edgefleet rollouts create digits@1.2.0 --selector 'profile=rpi4-64|rpi5' --auto-rollback
  edgefleet rollouts create digits@1.2.0 --shadow 30m --min-agreement 0.98 --max-latency-ratio 1.5
  edgefleet rollouts create digits@1.2.0 --canary 10% --canary-for 1h --min-labels 200 --max-accuracy-drop 0.01
  edgefleet rollouts status ro-3f2a9c01b2d4 --watch

A wave passes when at least --min-success-rate of its devices committed and --bake has gone by
since the last of them did; the rollout halts as soon as more than --max-failure-rate of a wave
failed (or timed out after --device-timeout), and with --auto-rollback sends every device it
touched back to the version it ran before. Only devices whose profile the bundle was validated
for are ever assigned it.

Golden samples (checked on every device before a version serves) prove the bundle still matches
the model it was converted from, on the data of conversion time. They cannot prove that a new
version behaves on the inputs a site sees today. For that, give each wave a stage first:

  --shadow DURATION   each device of the wave runs the new version BESIDE the one it serves and
                      mirrors live requests to it off the response path: every answer still comes
                      from the serving version. After DURATION the wave switches only if the new
                      version agreed on --min-agreement of the requests (top-1 class; a regressor
                      within its health-check tolerance) over at least --min-shadow-requests, with
                      its p99 latency at most --max-latency-ratio times the serving one's.
  --canary SHARE      the new version answers SHARE (e.g. 10%) of live requests, its answers tagged
                      with its version; feedback labels (POST /v1/feedback on the device) are kept
                      per version. After --canary-for, the wave switches only if the new version's
                      accuracy is at least the serving one's minus --max-accuracy-drop, with at least
                      --min-labels labels for each.

Otherwise the rollout halts with the figures as the reason (e.g. "shadow agreement 0.61 < 0.98
over 1,204 requests on wave 1") and the candidate is withdrawn; too few requests or labels when
the stage time is over halts too (rerun with a longer stage or a lower minimum). A device that
cannot hold a second model in its profile's memory refuses the stage (reason memory_budget).
docs/rollouts.md tells when to use which.
"""


def _duration(text: str) -> float:
    """``0``, ``90``, ``15m``, ``1h``, ``7d`` -> seconds (the server CLI's syntax, 0 allowed)."""
    from fleet_server.cli.admin import parse_ttl

    return 0.0 if text.strip().lower() in ("0", "0s", "0m", "0h") else float(parse_ttl(text))


def _waves(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of percentages: use e.g. 1,10,50,100") from exc


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: use a share such as 0.05 for 5%") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1 (0.05 means 5%)")
    return value


def _share(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1 (a share of live requests)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: use e.g. 10% or 0.1") from exc
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share above 0 and at most 100% (10% or 0.1)")
    return value


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration: use e.g. 30m")
    return seconds


def _count(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: use e.g. 500") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text.rstrip("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ratio: use e.g. 1.5 (or 1.5x)") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 (the candidate's p99 over the serving p99)")
    return value


def _stage_flags(create: argparse.ArgumentParser) -> None:
    shadow = create.add_argument_group("shadow stage (each wave compares the new version on live requests first)")
    shadow.add_argument("--shadow", type=_positive_duration, metavar="DURATION",
                        help="run each wave's devices in shadow for DURATION (e.g. 30m) before they switch")
    shadow.add_argument("--min-agreement", type=_rate, metavar="X",
                        help="share of mirrored requests the new version must agree on (default 0.98)")
    shadow.add_argument("--max-latency-ratio", type=_ratio, metavar="R",
                        help="its p99 latency at most R times the serving version's (default 1.5)")
    shadow.add_argument("--shadow-sample", type=_share, metavar="S",
                        help="share of live requests mirrored to it: 1.0 or 100%% is all (default 1.0)")
    shadow.add_argument("--min-shadow-requests", type=_count, metavar="N",
                        help="requests a wave must compare, else the rollout halts (default 100)")
    canary = create.add_argument_group("canary stage (each wave lets the new version answer a share first)")
    canary.add_argument("--canary", type=_share, metavar="SHARE",
                        help="the share of live requests the new version answers, e.g. 10%% or 0.1")
    canary.add_argument("--canary-for", type=_positive_duration, metavar="DURATION",
                        help="how long each wave's canary runs (default 30m)")
    canary.add_argument("--min-labels", type=_count, metavar="N",
                        help="feedback labels needed for each version, else the rollout halts (default 100)")
    canary.add_argument("--max-accuracy-drop", type=_rate, metavar="X",
                        help="how much less accurate than the serving version it may be (default 0)")


_SHADOW_ONLY = ("min_agreement", "max_latency_ratio", "shadow_sample", "min_shadow_requests")
_CANARY_ONLY = ("canary_for", "min_labels", "max_accuracy_drop")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def stage_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``shadow``/``canary`` part of the create body; UsageError for flags that do not go together."""
    from fleet_server.errors import InvalidInputError

    if args.shadow is not None and args.canary is not None:
        raise InvalidInputError("--shadow and --canary cannot be combined: a rollout runs one stage per wave",
                                fix="pick one: --shadow compares without changing an answer; --canary lets the new "
                                    "version answer a share and judges it on feedback labels")
    for mode, names in (("shadow", _SHADOW_ONLY), ("canary", _CANARY_ONLY)):
        given = [_flag(n) for n in names if getattr(args, n) is not None]
        if given and getattr(args, mode) is None:
            raise InvalidInputError(f"{', '.join(given)} only apply with --{mode}",
                                    fix=f"add --{mode} {'30m' if mode == 'shadow' else '10%'}, or drop them")
    if args.shadow is not None:
        shadow = {"seconds": args.shadow, "min_agreement": args.min_agreement, "max_latency_ratio": args.max_latency_ratio,
                  "sample": args.shadow_sample, "min_requests": args.min_shadow_requests}
        return {"shadow": {k: v for k, v in shadow.items() if v is not None}}
    if args.canary is not None:
        if args.canary >= 1:
            raise InvalidInputError(f"--canary {args.canary:.0%} would let the new version answer every request",
                                    fix="a canary is a share below 100%, e.g. --canary 10%; to switch, drop --canary")
        canary = {"share": args.canary, "seconds": args.canary_for, "min_labels": args.min_labels,
                  "max_accuracy_drop": args.max_accuracy_drop}
        return {"canary": {k: v for k, v in canary.items() if v is not None}}
    return {}


def register(sub: Any) -> None:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--server", help="server URL (default: $EDGEFLEET_SERVER, cli.toml, http://127.0.0.1:8080)")
    flags.add_argument("--token", help="admin token (default: $EDGEFLEET_TOKEN or token in ~/.config/edgefleet/cli.toml)")
    flags.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("rollouts", help="roll a model version out to the fleet in waves",
                       description="Take a published model version to the devices a selector matches, wave by "
                                   "wave, halting (and optionally rolling back) by itself when devices fail.")
    rsub = p.add_subparsers(dest="rollouts_command", metavar="ACTION")
    create = rsub.add_parser("create", parents=[flags], help="start a rollout",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_CREATE_EPILOG,
                             description="Plan seeded, stratified waves over the matching devices and start the "
                                         "first wave at once.")
    create.add_argument("ref", metavar="MODEL@VERSION", help="a pushed model version, e.g. digits@1.2.0")
    create.add_argument("--selector", default="", help="which devices: 'label=value,other=x', 'profile=rpi4-64', "
                                                        "'a=x|y' for any of; default: every device")
    create.add_argument("--waves", type=_waves, default=[1.0, 10.0, 50.0, 100.0],
                        help="cumulative percentages of the fleet per wave, ending in 100 (default 1,10,50,100)")
    create.add_argument("--bake", type=_duration, default=600.0, help="watch time after a wave's last commit: 0, 90, 10m, 1h (default 10m)")
    create.add_argument("--max-failure-rate", type=_rate, default=0.05, help="halt when more of a wave fails (default 0.05)")
    create.add_argument("--min-success-rate", type=_rate, default=0.95, help="share of a wave that must commit (default 0.95)")
    create.add_argument("--device-timeout", type=_duration, default=1800.0,
                        help="an assigned device with no result after this counts as failed (default 30m)")
    create.add_argument("--auto-rollback", action="store_true", help="on a halt, send touched devices back to their previous version")
    create.add_argument("--seed", type=int, help="seed of the wave draw (default: random; it is recorded)")
    _stage_flags(create)
    create.add_argument("--watch", action="store_true",
                        help="then redraw its status until it finishes, as 'status --watch' (exit 0 only if it completed)")
    create.add_argument("--devices", action="store_true", help="with --watch, also list every device's status")
    create.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    create.set_defaults(handler=_create)

    status = rsub.add_parser("status", parents=[flags], help="per-wave progress of one rollout",
                             description="Show a rollout's waves (assigned, committed, failed) and its log. With "
                                         "--watch, redraw until it finishes; the exit status is 0 only if it completed.")
    status.add_argument("rollout_id", metavar="ID", help="a rollout id, or 'latest' for the newest one")
    status.add_argument("--watch", action="store_true", help="keep redrawing until the rollout finishes")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    status.add_argument("--devices", action="store_true", help="also list every device's status")
    status.set_defaults(handler=_status)

    lst = rsub.add_parser("list", parents=[flags], help="one line per rollout, newest first")
    lst.add_argument("--state", choices=("pending", "running", "paused", "halted", "completed", "aborted", "rolled_back"))
    lst.set_defaults(handler=_list)

    for verb, text in (("pause", "stop assigning new devices (timeouts and halts still apply)"),
                       ("resume", "continue a paused rollout"),
                       ("abort", "stop for good, leaving devices where they are"),
                       ("rollback", "send every device the rollout touched back to its previous version")):
        cmd = rsub.add_parser(verb, parents=[flags], help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument("rollout_id", metavar="ID")
        cmd.set_defaults(handler=_command, verb=verb)
    p.set_defaults(handler=lambda a: p.print_help() or 2)


def _client(args: argparse.Namespace) -> Any:
    from fleet_server.cli.client import AdminClient, resolve_client_settings

    return AdminClient(resolve_client_settings(args.server, args.token))


def _create(args: argparse.Namespace) -> int:
    model, version = parse_model_ref(args.ref)
    body: dict[str, Any] = {
        "model": model, "version": version, "selector": args.selector, "waves": args.waves,
        "bake_seconds": args.bake, "max_failure_rate": args.max_failure_rate,
        "min_success_rate": args.min_success_rate, "device_timeout_seconds": args.device_timeout,
        "auto_rollback": args.auto_rollback, "seed": args.seed, **stage_body(args),
    }
    with _client(args) as client:
        view = client.request("POST", "/api/v1/rollouts", json=body)
        if args.watch:
            return _watch(client, view["id"], args)
    if args.json:
        print_json(view)
    else:
        print(f"rollout {view['id']} started: {model}@{version} to {view['assigned']} device(s) in wave 1")
        print(render(view))
        print(f"\nwatch it: edgefleet rollouts status {view['id']} --watch")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rollout_id = args.rollout_id
        if rollout_id == "latest":
            views = client.request("GET", "/api/v1/rollouts")
            if not views:
                raise NotFoundError("there is no rollout yet", fix="start one with `edgefleet rollouts create MODEL@VERSION`")
            rollout_id = max(views, key=lambda v: v["created_at"])["id"]
        if args.watch:
            return _watch(client, rollout_id, args)
        _show(client.request("GET", f"/api/v1/rollouts/{rollout_id}", params=_params(args)), args)
        return 0


def _params(args: argparse.Namespace) -> dict[str, str] | None:
    return {"devices": "true"} if args.devices else None


def _watch(client: Any, rollout_id: str, args: argparse.Namespace) -> int:
    """Redraw the rollout until it leaves the live states; 0 only if it completed."""
    path = f"/api/v1/rollouts/{rollout_id}"
    interactive = sys.stdout.isatty() and not args.json
    last: Any = None
    while True:
        view = client.request("GET", path, params=_params(args))
        if view != last:
            if interactive:
                sys.stdout.write("\x1b[H\x1b[J")  # redraw in place
            _show(view, args)
            last = view
        if view["state"] not in LIVE:
            return 0 if view["state"] == "completed" else 1
        time.sleep(max(0.1, args.interval))


def _show(view: Mapping[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print_json(view)
        return
    print(render(view))
    if args.devices:
        print()
        print_table(["device", "profile", "wave", "status", "previous", "online", "reason"],
                    [(d["device_id"], d["profile"], None if d["wave"] is None else d["wave"] + 1, d["status"],
                      d["previous_version"], d["online"], d["reason"]) for d in view.get("device_records", [])])
    sys.stdout.flush()


def render(view: Mapping[str, Any]) -> str:
    """The progress view: a header, one row per wave, and the latest log lines."""
    policy = view["policy"]
    header = format_kv([
        ("rollout", view["id"]), ("model", f"{view['model']}@{view['version']}"), ("state", view["state"]),
        ("selector", view["selector"] or "(every device)"),
        ("wave", f"{view['current_wave'] + 1} of {len(view['waves'])}"),
        ("policy", f"bake {policy['bake_time_s']:g}s, max failure {policy['max_failure_rate']:g}, "
                   f"min success {policy['min_success_rate']:g}, device timeout {policy['device_timeout_s']:g}s, "
                   f"auto-rollback {'on' if policy['auto_rollback'] else 'off'}"),
        ("stage", _stage_policy(policy.get("stage"))),
        ("devices", ", ".join(f"{k} {v}" for k, v in view["devices"].items())),
        ("halt reason", view["halt_reason"] or None),
    ])
    rows = []
    staged = policy.get("stage") is not None
    for wave in view["waves"]:
        marker = ">" if wave["index"] == view["current_wave"] and view["state"] in LIVE else " "
        done = wave["committed"] + wave["failed"] + wave["rolled_back"]
        bar = "#" * round(10 * done / wave["size"]) if wave["size"] else ""
        row = (f"{marker}{wave['index'] + 1}", f"{wave['percent']:g}%", wave["size"], wave["pending"],
               wave["in_flight"], wave["committed"], wave["failed"], wave["rolled_back"], f"[{bar:<10}]")
        rows.append((*row, wave.get("stage_summary") or "") if staged else row)
    headers = ["wave", "share", "size", "pending", "assigned", "committed", "failed", "rolled back", ""]
    table = format_table([*headers, "stage"] if staged else headers, rows)
    lines = [f"  {entry['at']}  {entry['message']}" for entry in view.get("log", [])[-8:]]
    return "\n".join([header, "", table, "", "log:", *lines])


def _stage_policy(stage: Mapping[str, Any] | None) -> str | None:
    if not stage:
        return None
    if stage.get("mode") == "shadow":
        return (f"shadow {stage['duration_s']:g}s per wave at sample {stage['sample']:g}: agreement >= "
                f"{stage['min_agreement']:g}, p99 <= {stage['max_latency_ratio']:g}x serving, "
                f">= {stage['min_requests']:,} requests")
    return (f"canary {stage['share']:.0%} for {stage['duration_s']:g}s per wave: accuracy >= serving - "
            f"{stage['max_accuracy_drop']:g}, >= {stage['min_labels']:,} labels per version")


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        views = client.request("GET", "/api/v1/rollouts", params={"state": args.state} if args.state else None)
    if args.json:
        print_json(views)
        return 0
    print_table(["id", "model", "state", "wave", "committed", "failed", "selector", "created"],
                [(v["id"], f"{v['model']}@{v['version']}", v["state"], f"{v['current_wave'] + 1}/{len(v['waves'])}",
                  v["devices"].get("committed", 0), v["devices"].get("failed", 0) + v["devices"].get("timed_out", 0),
                  v["selector"] or "*", v["created_at"]) for v in views])
    return 0


def _command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.request("POST", f"/api/v1/rollouts/{args.rollout_id}/{args.verb}")
    if args.json:
        print_json(view)
    else:
        print(f"rollout {view['id']} is now {view['state']}")
    return 0
