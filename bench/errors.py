"""The benchmarks' exception base (see the package docstring for the hierarchy)."""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class BenchError(EdgefleetError):
    """A benchmark could not set up what it measures (a server that never came up, a tool missing)."""
