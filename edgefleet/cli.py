"""The ``edgefleet`` command: one entry point, a subcommand per job.

Each package registers its own subcommands (``register(subparsers)`` in its ``cli`` module)
and imports its heavy libraries only inside the handlers, so ``edgefleet agent ...`` on a
Raspberry Pi never loads TensorFlow or SQLAlchemy. Every ``EdgefleetError`` becomes one line
on stderr naming the problem and the fix, with exit status 2 for usage problems and 1 for
failures. With ``--json`` that line is a problem document instead (``edgefleet.problems``, the
REST API's error shape; a refusal from the server keeps the server's ``status`` and ``type``),
so a script reads results from stdout and errors from stderr, both as JSON.

No input makes the command print a traceback: an exception that is not an ``EdgefleetError``
is a bug, told in one line (``-vv`` prints its traceback) with exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from edgefleet import __version__, logs
from edgefleet.errors import EdgefleetError
from edgefleet.problems import TYPE_PREFIX, Problem, from_error

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


class UsageError(EdgefleetError):
    """The command line does not parse: ``parser`` is the (sub)command's parser, for its usage."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        super().__init__(message, fix=f"see `{parser.prog} --help`")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised for ``main`` to report (as JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def build_parser() -> argparse.ArgumentParser:
    # Subparsers inherit the parser class, so every subcommand's usage errors come here too.
    parser = _Parser(prog="edgefleet", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    _add_log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of edgefleet is not built in this checkout
            raise
        module.register(sub)
    _add_log_flags_below(parser)
    return parser


def _add_log_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Below the top level the flags write to their own dests with no default: argparse copies a
    # subcommand's namespace over its parent's, so a default there would erase `edgefleet -v ...`.
    below = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="count", dest="verbose" if top else "sub_verbose",
                        help="more log output (-vv for debug)", **({"default": 0} if top else below))
    parser.add_argument("--log-format", choices=logs.FORMATS, dest="log_format" if top else "sub_log_format",
                        help=f"text lines, or one JSON object per line (also ${logs.FORMAT_ENV})",
                        **({"default": None} if top else below))


def _add_log_flags_below(parser: argparse.ArgumentParser) -> None:
    """``-v`` and ``--log-format`` after every subcommand too: ``edgefleet agent run -v`` (issue 17)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                if not any("--log-format" in a.option_strings for a in child._actions):
                    _add_log_flags(child)
                _add_log_flags_below(child)


def _problem(exc: EdgefleetError) -> Problem:
    """The error as a problem document; a server's refusal carries the server's own (``problem``)."""
    carried = getattr(exc, "problem", None)
    return carried if isinstance(carried, Problem) else from_error(exc)


def _report(exc: EdgefleetError, as_json: bool) -> None:
    if as_json:
        sys.stderr.write(_problem(exc).render().decode() + "\n")
    elif isinstance(exc, UsageError):
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
    else:
        print(f"edgefleet: error: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that a command line that does not parse is told as JSON too.
    as_json = "--json" in words[:words.index("--")] if "--" in words else "--json" in words
    parser = build_parser()
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        _report(exc, as_json)
        return 2
    as_json = bool(getattr(args, "json", False))
    args.verbose = logs.verbosity(args)
    try:
        logs.configure(args.verbose, log_format=logs.format_flag(args))
    except EdgefleetError as exc:
        _report(exc, as_json)
        return 2
    try:
        return _dispatch(parser, args, as_json)
    finally:
        logs.restore()  # a caller running main() in-process keeps its own logging


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, as_json: bool) -> int:
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except UsageError as exc:
        _report(exc, as_json)
        return 2
    except EdgefleetError as exc:
        _report(exc, as_json)
        return 1
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the reader left: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug, not bad input: one line, the traceback only when asked for
        if args.verbose >= 2:
            traceback.print_exc()
        bug = Problem(f"an unexpected error: {type(exc).__name__}: {str(exc)[:200]}", type=TYPE_PREFIX + "internal",
                      fix="this is a bug in edgefleet: run again with -vv for the traceback and report it")
        if as_json:
            sys.stderr.write(bug.render().decode() + "\n")
        else:
            print(f"edgefleet: error: {bug.detail} (fix: {bug.fix})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
