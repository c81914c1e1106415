"""edgefleet's benchmarks: ``scripts/bench`` measures edgefleet side by side with its baselines.

Each benchmark module (``inference``, ``quantization``, ``rollout_scale``, ``ingest``,
``footprint``) returns one JSON-ready section of measurements taken in the same run as the
baseline it is compared with, so every figure is a ratio or a distribution on this machine.
``report`` turns a run document into terminal tables and ``plots`` into PNGs.

Nothing here asserts a timing: targets are reported as met or missed, never enforced.

    EdgefleetError
    └── BenchError      a benchmark could not set up what it measures
"""

from bench.errors import BenchError

__all__ = ["BenchError"]
