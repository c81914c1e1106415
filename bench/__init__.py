"""edgefleet's benchmarks: ``scripts/bench`` measures edgefleet side by side with its baselines.

Each benchmark module (``inference``, ``quantization``, ``rollout_scale``, ``ingest``,
``footprint``) returns one JSON-ready section of measurements taken in the same run as the
baseline it is compared with, so every figure is a ratio or a distribution on this machine.
``report`` turns a run document into terminal tables and ``plots`` into PNGs.

Nothing here asserts a timing: targets are reported as met or missed, never enforced.

The helpers they share: ``models`` (the three benchmark models, trained and converted once,
cached), ``loadgen`` (the load generator, always a separate process), ``baseline`` (the
joblib+Flask app), ``peers`` (FastAPI and Flask over onnxruntime, the competent peers), ``processes`` (start/stop the agent and the baseline), ``fleet`` (a real
fleet server process, its database and seeded rows), ``stats`` (pure percentiles and ratios)
and ``run`` (the command line behind ``scripts/bench``).

    EdgefleetError
    └── BenchError      a benchmark could not set up what it measures
"""

from bench.errors import BenchError

__all__ = ["BenchError"]
