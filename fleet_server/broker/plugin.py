"""Building the edgefleet Mosquitto plugin on the broker host: ``python -m fleet_server.broker.plugin build``.

The plugin is C (``mosquitto_plugin/edgefleet_auth.c``, shipped in the server's package as a
source file): neither the server's nor the agent's pip install compiles anything. The broker
host needs a C compiler, Mosquitto's plugin headers and libcurl's:

    apt-get install -y gcc mosquitto-dev libmosquitto-dev libcurl4-openssl-dev
    python -m fleet_server.broker.plugin build --out /usr/local/lib/edgefleet

then the lines ``fleet_server.broker.mosquitto_http.conf_lines`` gives (``... plugin conf``
prints them) go in mosquitto.conf. This module only runs the compiler; it does not install
packages or touch Mosquitto.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from fleet_server.broker.mosquitto_http import DEFAULT_TIMEOUT_MS, PLUGIN_FILE, conf_lines
from fleet_server.errors import BrokerError

PACKAGES = "gcc mosquitto-dev libmosquitto-dev libcurl4-openssl-dev"
_HEADERS = ("mosquitto_plugin.h", "mosquitto_broker.h", "mosquitto.h", "curl/curl.h")


def source() -> Path:
    """The plugin's C source, wherever the package is installed."""
    return Path(str(resources.files("fleet_server.broker") / "mosquitto_plugin" / "edgefleet_auth.c"))


def compile_command(src: Path, out: Path, compiler: str = "cc") -> list[str]:
    return [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-o", str(out), str(src), "-lcurl"]


def build(out_dir: Path, *, compiler: str | None = None) -> Path:
    """Compile the plugin into ``out_dir/edgefleet_auth.so``; BrokerError naming the packages if it cannot."""
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BrokerError("no C compiler to build the Mosquitto plugin with",
                          fix=f"on the broker host: apt-get install -y {PACKAGES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PLUGIN_FILE
    partial = out_dir / f".{PLUGIN_FILE}.tmp"
    done = subprocess.run(compile_command(source(), partial, cc), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        missing = [h for h in _HEADERS if f"{h}: No such file" in done.stderr]
        raise BrokerError(f"building the Mosquitto plugin failed{': missing ' + ', '.join(missing) if missing else ''}:\n"
                          f"{done.stderr.strip()[-2000:]}",
                          fix=f"apt-get install -y {PACKAGES}")
    os.replace(partial, target)  # a running broker never sees a half-written file
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet_server.broker.plugin",
                                     description="The edgefleet Mosquitto plugin (broker_accounts = mosquitto-http).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help=f"compile it (needs: {PACKAGES})")
    b.add_argument("--out", type=Path, required=True, help=f"directory to write {PLUGIN_FILE} into")
    c = sub.add_parser("conf", help="print the mosquitto.conf lines that load it")
    c.add_argument("--plugin", type=Path, required=True, help=f"path of the built {PLUGIN_FILE}")
    c.add_argument("--server-url", required=True, help="the fleet server as the broker reaches it, e.g. http://fleet:8080")
    c.add_argument("--token-file", type=Path, required=True, help="file holding the server's broker_auth_token")
    c.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(args.out))
        else:
            print("per_listener_settings false")
            print("\n".join(conf_lines(args.plugin, args.server_url, token_file=args.token_file,
                                       timeout_ms=args.timeout_ms)))
    except BrokerError as exc:
        print(f"error: {exc.message}\nfix: {exc.fix}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
