"""Importing optional dependencies inside the function that needs them, with an error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from dogclf.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Imports ``module``, or raises an error that says which extra installs it.

    Args:
        module: The module to import, e.g. ``"boto3"``.
        extra: The dogclf extra that installs it, e.g. ``"sagemaker"``.
        purpose: What needs it, e.g. ``"Launching SageMaker jobs"``.

    Raises:
        MissingExtraError: ``module`` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed here: pip install 'dogclf[{extra}]'"
        ) from exc
