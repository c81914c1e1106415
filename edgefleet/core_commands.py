"""Subcommands that need only the contracts: ``profiles`` and ``bundle inspect``."""

from __future__ import annotations

import argparse
from typing import Any

from edgefleet.bundle import verify_bundle
from edgefleet.console import format_kv, human_bytes, print_json, print_table
from edgefleet.profiles import all_profiles, load_profile


def register(sub: Any) -> None:
    profiles = sub.add_parser("profiles", help="list and show firmware profiles (device targets)",
                              description="Firmware profiles describe a device target: hardware, runtime, "
                              "execution providers, size and latency budgets, and the tolerance a conversion must meet. "
                              "Add your own in a directory named by $EDGEFLEET_PROFILES_DIR.")
    psub = profiles.add_subparsers(dest="profiles_command", metavar="ACTION")
    plist = psub.add_parser("list", help="one line per profile")
    plist.add_argument("--json", action="store_true", help="print JSON")
    plist.set_defaults(handler=_profiles_list)
    pshow = psub.add_parser("show", help="every field of one profile")
    pshow.add_argument("name", help="profile name (e.g. rpi4-64) or path to a .toml file")
    pshow.add_argument("--json", action="store_true", help="print JSON")
    pshow.set_defaults(handler=_profiles_show)
    profiles.set_defaults(handler=lambda a: profiles.print_help() or 2)

    bundle = sub.add_parser("bundle", help="inspect a model bundle",
                            description="Validate a bundle (manifest schema, every file's sha256) and show what it holds.")
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="ACTION")
    inspect = bsub.add_parser("inspect", help="validate a bundle and print its manifest")
    inspect.add_argument("file", help="bundle file (.tar.gz)")
    inspect.add_argument("--json", action="store_true", help="print the manifest and bundle hash as JSON")
    inspect.set_defaults(handler=_bundle_inspect)
    bundle.set_defaults(handler=lambda a: bundle.print_help() or 2)


def _profiles_list(args: argparse.Namespace) -> int:
    profiles = all_profiles()
    if args.json:
        print_json([p.to_dict() for p in profiles])
        return 0
    print_table(
        ["name", "arch", "cores", "ram", "runtime", "providers", "formats", "quantize", "latency budget"],
        [(p.name, p.architecture, p.cores, f"{p.ram_mb} MB", p.runtime, p.execution_providers,
          p.allowed_formats, p.default_quantization, f"{p.latency_budget_ms:g} ms") for p in profiles],
    )
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    profile = load_profile(args.name)
    if args.json:
        print_json(profile.to_dict())
        return 0
    data = profile.to_dict()
    tol = data.pop("tolerance")
    pairs = list(data.items()) + [(f"tolerance.{k}", v) for k, v in tol.items()]
    print(format_kv(pairs))
    return 0


def _bundle_inspect(args: argparse.Namespace) -> int:
    bundle = verify_bundle(args.file)  # streams: the files are checked, not kept
    m = bundle.manifest
    if args.json:
        print_json({"sha256": bundle.sha256, "size": bundle.size, "manifest": m.to_dict()})
        return 0
    print(format_kv([
        ("model", m.ref), ("format", m.format), ("task", m.task), ("quantization", m.quantization),
        ("profiles", m.profiles), ("bundle sha256", bundle.sha256), ("bundle size", human_bytes(bundle.size)),
        ("model size", human_bytes(m.files[m.model_file].size)),
        ("inputs", [f"{t.name}:{t.dtype}{list(t.shape)}" for t in m.inputs]),
        ("outputs", [f"{t.name}:{t.dtype}{list(t.shape)}({t.role})" for t in m.outputs]),
        ("classes", m.class_labels), ("health check", m.health_check.to_dict()),
        ("source", m.source.get("framework")), ("created by", m.created_by),
    ]))
    report = m.report
    if report:
        print("\nconversion report:")
        print(format_kv(sorted((k, v) for k, v in report.items() if not isinstance(v, dict))))
    return 0
