"""Launch ``edgefleet agent ...`` with a shorter update probation, for demos and tests.

    python -m simulation.agentproc --probation-s 3 -- agent run --state-dir D --http-port 0

The agent watches a new model for 60 s (at least 20 requests) before it commits it, and
``agent run`` has no setting for that yet; a demo that rolls out three versions in waves
cannot wait minutes per wave. This launcher gives the updater a shorter ``ProbationConfig``
as its default and then runs the unchanged ``edgefleet`` command line, so everything else
(enrollment, TUF download, health check, switch, rollback) is the real agent's code.
It deliberately changes nothing but the probation defaults.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any


def shorten_probation(duration_s: float, min_requests: int) -> None:
    """Make every ``agent.updater.Updater`` built after this call use the shorter probation."""
    from agent import updater
    from agent.probation import ProbationConfig

    config = ProbationConfig(duration_s=duration_s, min_requests=min_requests, max_wait_s=max(duration_s * 4, 5.0))
    original = updater.Updater.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, probation: ProbationConfig | None = None, **kwargs: Any) -> None:
        original(self, *args, probation=probation or config, **kwargs)

    updater.Updater.__init__ = init  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.agentproc",
                                     description="run `edgefleet ARGS` with a shorter update probation")
    parser.add_argument("--probation-s", type=float, default=3.0, help="probation duration in seconds")
    parser.add_argument("--min-requests", type=int, default=5, help="requests probation needs to see")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the edgefleet arguments")
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    shorten_probation(options.probation_s, options.min_requests)
    from edgefleet.cli import main as edgefleet_main

    return edgefleet_main(args)


if __name__ == "__main__":
    sys.exit(main())
