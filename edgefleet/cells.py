"""Text cells of tabular files (CSV): telling a number from a name.

The converter's data reader (``converter.data``), the agent's batch reader (``agent.batch``)
and the server's predict upload (``fleet_server.registry.predict``) each read CSV text and
must agree on what a number is, so that a file one side takes as data another does not take
as a header. ``is_number`` is that one rule. Stdlib only, pure.

It does not decide where a header is, or what an empty cell means: each reader keeps its own
rule for those (see its docstring).
"""

from __future__ import annotations


def is_number(cell: str) -> bool:
    """True when ``float`` reads ``cell``.

    That includes what ``float`` takes beyond plain decimals: surrounding white space,
    exponents, ``nan``, ``inf`` and digit-separating underscores (``1_000``). An empty or
    blank cell is not a number.
    """
    try:
        float(cell)
    except ValueError:
        return False
    return True
