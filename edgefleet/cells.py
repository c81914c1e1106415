"""Text cells of tabular files (CSV): telling a number from a name.

The converter's data reader (``converter.data``), the agent's batch reader (``agent.batch``)
and the server's predict upload (``fleet_server.registry.predict``) each read CSV text and
must agree on what a number is, so that a file one side takes as data another does not take
as a header. ``is_number`` is that one rule. ``column_value`` is the other one the agent and the
server share: a cell of a named column (a model with column inputs) as the JSON value the
records parser (``edgefleet.inputs.to_feeds``) takes for that column's dtype. Stdlib only, pure.

It does not decide where a header is, or what an empty cell means for a matrix model: each
reader keeps its own rule for those (see its docstring).
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


_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})


def column_value(cell: str, dtype: str, *, allow_nan: bool = False) -> str | float | int | bool | None:
    """``cell`` of a column of ``dtype`` (a manifest dtype) as the value a JSON record would hold.

    A string column keeps the text as it is; a float column reads what ``is_number`` reads; an
    int64 column an integer; a bool column ``true``/``false``/``1``/``0`` (any case). An empty
    or blank cell is a missing value (pandas reads it so too): None for a float32 column that
    allows NaN, refused for any other. Raises ValueError whose message completes "column X ..."
    ("is empty", "is 'abc', not a number"), for the caller to name the row and column.
    """
    if not cell.strip():
        if dtype == "float32" and allow_nan:
            return None
        raise ValueError("is empty")
    if dtype == "string":
        return cell
    text = cell.strip()
    if dtype == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"is {cell[:40]!r}, not true or false")
    if dtype == "int64":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"is {cell[:40]!r}, not an integer") from None
    if is_number(text):
        return float(text)
    raise ValueError(f"is {cell[:40]!r}, not a number")
