"""A package's public names, each imported from the module that defines it on first use (PEP 562).

A package whose `__init__` imported its modules eagerly would load JAX (or Flax) for any name
imported from it; with `lazy_exports` it loads a module only when one of its names is first
read (`rismvdr.io`, `rismvdr.localize`, `rismvdr.models`, `rismvdr.eval`). Imports
nothing from rismvdr.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: dict, sources: Mapping[str, str]) -> tuple[Callable, Callable]:
    """The module-level `(__getattr__, __dir__)` of `package`.

    Args:
      package: the package's name (for the error message).
      namespace: its `globals()`; a name read once is stored there, so later reads are plain
        attribute reads.
      sources: public name -> the module that defines it.

    Returns:
      `__getattr__(name)` (the name from its module; AttributeError for any other name) and
      `__dir__()` (the namespace with the package's `__all__`, else the names of `sources`).
    """
    def __getattr__(name: str):
        if name in sources:
            value = getattr(importlib.import_module(sources[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", sources)))

    return __getattr__, __dir__
