"""Which version answers a server-side predict that names none: the one the fleet serves (issue 17).

The newest published version is often not the one to answer for: a bundle for another
profile only, or a version whose rollout was rolled back, while the fleet still serves an
older one. So a predict without ``?version=`` gets, in this order:

1. the version of the model that most enrolled devices report serving (ties: the newer one),
   among the published, non-yanked versions;
2. else the model's only published, non-yanked version (nothing to choose between);
3. else a 409 naming the versions and asking for ``?version=``: guessing would answer from a
   model nobody validated against the fleet.

Pure: the reports and the published versions come in, a version or an error goes out. This
module does not read the database (``fleet_server.registry.predict.Predictor`` does, and
caches the counts for a few seconds) and does not look at rollouts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgefleet.version import ModelVersion
from fleet_server.errors import ConflictError, NotFoundError


def served_counts(reports: Iterable[Mapping[str, Any] | None], name: str) -> Counter[str]:
    """How many devices report serving each version of ``name`` (a report without it counts for none)."""
    counts: Counter[str] = Counter()
    for report in reports:
        models = (report or {}).get("models")
        entry = models.get(name) if isinstance(models, Mapping) else None
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if isinstance(version, str) and version:
            counts[version] += 1
    return counts


def default_version(name: str, *, served: Mapping[str, int], published: Sequence[str]) -> str:
    """The version a predict without ``?version=`` runs (the rules in the module docstring)."""
    available = set(published)
    candidates = {v: n for v, n in served.items() if v in available and n > 0}
    if candidates:
        return max(candidates, key=lambda v: (candidates[v], ModelVersion.parse(v)))
    if len(available) == 1:
        return next(iter(available))
    if not available:
        raise NotFoundError(f"model {name!r} has no published version that is not yanked",
                            fix="see `edgefleet models list`, or push one with `edgefleet models push`")
    shown = ", ".join(sorted(available, key=ModelVersion.parse, reverse=True)[:5])
    raise ConflictError(f"no device serves a published version of {name!r}, and it has several ({shown}): "
                        "which one should answer?", fix=f"pass ?version=, e.g. ?version={shown.split(', ')[0]}")
