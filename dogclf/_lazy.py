"""Lazy package attributes: ``from dogclf.training import Trainer`` imports only the module that defines it.

Each package's ``__init__`` names its public attributes and their modules in an ``_EXPORTS`` mapping and calls
:func:`lazy_exports`, so importing a package does no work (the guide's "no work at import time") and its public
names still come from one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of a package whose attributes are imported on first use.

    Args:
        namespace: The package's ``globals()`` (its ``__name__`` and ``__all__``; imported values are cached there).
        exports: Attribute name -> the module that defines it.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace["__all__"])

    return __getattr__, __dir__
