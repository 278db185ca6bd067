"""SageMaker: the training container's entry point, job launchers (training, tuning, deployment), a local runner.

Names are imported lazily; the SageMaker SDK and boto3 (extra ``dogclf[sagemaker]``) are imported only by the
functions that talk to AWS, and the training toolkit (``dogclf[sagemaker-local]``) only by the local runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.sagemaker.environment import ContainerEnvironment
    from dogclf.sagemaker.local import LocalResult, run_local
    from dogclf.sagemaker.metrics import OBJECTIVE_METRIC, metric_definitions
    from dogclf.sagemaker.source import build_source_dir
