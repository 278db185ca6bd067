"""Natural sort order, shared by backbone listings and class folders."""

from __future__ import annotations

import re

__all__ = ["natural_key"]

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders digit runs by value: ``resnet18 < resnet50 < resnet101``, ``9.Akita < 10.Beagle``."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(text)]
