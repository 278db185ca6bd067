"""Where dogclf keeps per-user caches (feature cache, converted backbones)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(environ: Mapping[str, str], explicit: str, leaf: str) -> Path:
    """``$<explicit>`` if set, else ``$XDG_CACHE_HOME/dogclf/<leaf>``, else ``~/.cache/dogclf/<leaf>``."""
    chosen = environ.get(explicit, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    base = environ.get("XDG_CACHE_HOME", "").strip()
    if base:
        return Path(base).expanduser() / "dogclf" / leaf
    home = environ.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".cache" / "dogclf" / leaf
