"""The ``edgefleet`` command: one entry point, a subcommand per job.

Each package registers its own subcommands (``register(subparsers)`` in its ``cli`` module)
and imports its heavy libraries only inside the handlers, so ``edgefleet agent ...`` on a
Raspberry Pi never loads TensorFlow or SQLAlchemy. Every ``EdgefleetError`` becomes one line
on stderr naming the problem and the fix, with exit status 2 for usage problems and 1 for
failures.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from edgefleet import __version__
from edgefleet.errors import EdgefleetError

# (module, what it adds); a module whose optional import fails is skipped, not fatal.
_COMMAND_MODULES = (
    "edgefleet.core_commands",
    "converter.cli",
    "fleet_server.cli.admin",
    "fleet_server.cli.rollouts",
    "agent.cli",
    "simulation.cli",
)

DESCRIPTION = """\
edgefleet: take a trained model to a fleet of Raspberry Pi and Jetson devices.

  1. convert   a scikit-learn, LightGBM/XGBoost, ONNX or Keras model into a verified bundle
               for a firmware profile:   edgefleet convert model.joblib --profile rpi4-64 ...
  2. server    run the registry and rollout server:   edgefleet server
  3. push      publish the bundle:   edgefleet models push digits-1.0.0.tar.gz
  4. enroll    a device:   edgefleet devices enroll --profile rpi4-64   (prints a token)
               then on the device:   edgefleet agent enroll --server URL --token T
  5. roll out  in waves:   edgefleet rollouts create digits@1.0.0 --waves 10,50,100

Run `edgefleet COMMAND --help` for the details of each command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of edgefleet is not built in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=int(os.environ.get("EDGEFLEET_LOG_LEVEL", level)),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except EdgefleetError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the reader left: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
