"""SageMaker: the training container's entry point, job launchers (training, tuning, deployment), a local runner.

Names are imported lazily; the SageMaker SDK and boto3 (extra ``dogclf[sagemaker]``) are imported only by the
functions that talk to AWS, and the training toolkit (``dogclf[sagemaker-local]``) only by the local runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "metric_definitions": "dogclf.sagemaker.metrics",
    "OBJECTIVE_METRIC": "dogclf.sagemaker.metrics",
    "ContainerEnvironment": "dogclf.sagemaker.environment",
    "run_local": "dogclf.sagemaker.local",
    "LocalResult": "dogclf.sagemaker.local",
    "build_source_dir": "dogclf.sagemaker.source",
}

__all__ = [
    "OBJECTIVE_METRIC",
    "ContainerEnvironment",
    "LocalResult",
    "build_source_dir",
    "metric_definitions",
    "run_local",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dogclf.sagemaker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)


if TYPE_CHECKING:
    from dogclf.sagemaker.environment import ContainerEnvironment
    from dogclf.sagemaker.local import LocalResult, run_local
    from dogclf.sagemaker.metrics import OBJECTIVE_METRIC, metric_definitions
    from dogclf.sagemaker.source import build_source_dir
