"""Lazy package exports: each public name is imported from its home module on first use.

Importing one submodule (a command line's --help, say) then loads only what that submodule needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(namespace: dict[str, Any], homes: dict[str, str]) -> tuple[Callable, Callable]:
    """A package's module-level (__getattr__, __dir__) for `homes` (name -> module), caching into `namespace`."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *homes])

    return __getattr__, __dir__
