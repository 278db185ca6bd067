"""The errors of :mod:`dogclf.diagnostics`.

Each is a :class:`~dogclf.errors.DogclfError`, so the CLI shows the message without a traceback.
"""

from __future__ import annotations

from dogclf.errors import DogclfError

__all__ = ["MissingExtraError", "OutputDirError"]


class MissingExtraError(DogclfError, ImportError):
    """An optional dependency a diagnostics option needs is not installed (the message names the extra)."""


class OutputDirError(DogclfError, FileExistsError):
    """A diagnostics output folder that cannot be used as it is."""
