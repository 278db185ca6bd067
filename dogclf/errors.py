"""Exception types raised by dogclf.

Each subclasses the built-in exception a caller would expect, so ``except
KeyError`` still catches an unknown backbone, and each message says what was
wrong, where, and what would work.
"""

from __future__ import annotations

__all__ = [
    "BackboneContractError",
    "DatasetError",
    "DogclfError",
    "DuplicateBackboneError",
    "InvalidBackboneSpecError",
    "MissingExtraError",
    "ModelDirError",
    "TrainingDivergedError",
    "UnknownBackboneError",
    "UnreadableImageError",
    "WeightsError",
    "WeightsUnavailableError",
]


class DogclfError(Exception):
    """Base class of every error dogclf raises on purpose."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise.
        return str(self.args[0]) if self.args else ""


class UnknownBackboneError(DogclfError, KeyError):
    """A backbone name that no built-in, registered or plugin backbone has."""


class DuplicateBackboneError(DogclfError, ValueError):
    """A second backbone registered under a name that is already taken."""


class InvalidBackboneSpecError(DogclfError, ValueError):
    """A backbone spec (often from a plugin) whose fields are not usable."""


class BackboneContractError(DogclfError, AssertionError):
    """A backbone that builds but breaks the contract dogclf relies on."""


class WeightsError(DogclfError, ValueError):
    """Pretrained weights that cannot be used (wrong keys, unreadable file)."""


class WeightsUnavailableError(DogclfError, FileNotFoundError):
    """Pretrained weights that could not be found or downloaded."""


class DatasetError(DogclfError, ValueError):
    """A data folder that does not have a usable layout."""


class UnreadableImageError(DogclfError, ValueError):
    """An image file that cannot be decoded (raised with ``strict=True``)."""


class ModelDirError(DogclfError, FileNotFoundError):
    """A trained-model directory that is missing files or is malformed."""


class TrainingDivergedError(DogclfError, FloatingPointError):
    """A training loss that became NaN or infinite; the last good checkpoint is kept."""


class MissingExtraError(DogclfError, ImportError):
    """An optional dependency that is not installed; the message names the extra that installs it."""
