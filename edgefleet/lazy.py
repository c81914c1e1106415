"""Names a package exports but imports on first use (PEP 562's module ``__getattr__``).

Every ``edgefleet`` command imports the packages that register subcommands (``converter``,
``simulation``), so whatever their ``__init__`` imports, each start of ``edgefleet agent run``,
``edgefleet rollouts create`` and the rest pays for. A package names its heavy exports here
instead; ``from package import name`` then imports the module the first time it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(package: str, namespace: MutableMapping[str, Any],
                 modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``modules[name]`` for ``name``, once."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups find it without coming here
        return value

    return __getattr__
