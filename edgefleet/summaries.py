"""Per-sample summary statistics of tensor inputs: what drift counts for an N-D input.

An audio window of 16,000 values or an image of 3,072 cannot be binned value by value (the
reference and every telemetry batch would carry thousands of count lists), so each sample is
summarised by a few numbers, and those are binned like any numeric feature: for a tensor input
its ``mean``, ``std``, ``min`` and ``max`` over every value of the sample (all axes after the
batch). The converter computes them over the validation samples to write the reference
(``reference.json`` features named ``INPUT.STATISTIC``, with ``input`` and ``statistic`` set),
and the agent over every request's samples to count them: one function on both sides, so the
two can never disagree on what "mean" means.

Pure numpy, no I/O. It does not bin (the converter and ``agent.drift`` do) and knows nothing of
images' own statistics (``edgefleet.images.image_statistics``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TENSOR_STATISTICS = ("mean", "std", "min", "max")
MAX_BINNED_FEATURES = 256
"""A one-matrix model wider than this is summarised like a tensor (a 16,000-sample window given
as ``[batch, 16000]``): per-feature bins beyond it would make the reference and every telemetry
batch grow with the width."""


def feature_name(input_name: str, statistic: str) -> str:
    """The reference feature that counts ``statistic`` of ``input_name``'s samples."""
    return f"{input_name}.{statistic}"


def statistics(samples: np.ndarray, names: Sequence[str] = TENSOR_STATISTICS) -> np.ndarray:
    """``[n, len(names)]`` float64: each statistic over every value of each sample (all axes after
    the first). A sample holding NaN gives NaN statistics, which drift leaves uncounted."""
    unknown = [n for n in names if n not in TENSOR_STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {', '.join(unknown)}; known: {', '.join(TENSOR_STATISTICS)}")
    rows = np.asarray(samples)
    flat = rows.reshape(rows.shape[0], -1).astype(np.float64, copy=False)
    out = np.empty((flat.shape[0], len(names)), dtype=np.float64)
    if flat.shape[1] == 0:
        out[:] = np.nan
        return out
    for j, name in enumerate(names):
        if name == "mean":
            out[:, j] = flat.mean(axis=1)
        elif name == "std":
            out[:, j] = flat.std(axis=1)
        elif name == "min":
            out[:, j] = flat.min(axis=1)
        else:
            out[:, j] = flat.max(axis=1)
    return out
