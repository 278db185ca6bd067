"""Whether SageMaker Debugger can see a job's tensors, and the Debugger fields the job's request may carry.

Debugger's rules read the tensors that the smdebug hook writes *inside* the training container. AWS's PyTorch
training images install smdebug up to PyTorch 2.1 (``pytorch/training/docker/2.1/py3/Dockerfile.cpu`` in
aws/deep-learning-containers builds smdebug 1.0.34) and no longer from 2.2 on (the 2.2 to 2.8 Dockerfiles install no
smdebug), while dogclf needs PyTorch 2.3 or newer. So on every image a dogclf job can use, ``--debugger`` would
start rule containers that receive no tensors and bill for nothing: :func:`debugger_fields` refuses it and says what
works instead. AWS also documents that Debugger is not available for distributed jobs with SageMaker checkpoints
("SMDebug Does Not Currently Support Distributed Training Jobs With Checkpointing Enabled"); every dogclf job has a
checkpoint configuration, so a distributed job (several instances or GPUs) gets no hook and no tensor rules, only
the Profiler's system monitoring.
"""

from __future__ import annotations

import logging
from typing import Any

from dogclf._logging import deprecated_log
from dogclf.errors import DogclfError

__all__ = ["SMDEBUG_IMAGES_UP_TO", "DebuggerUnsupportedError", "debugger_fields", "image_has_smdebug"]

logger = logging.getLogger(__name__)

SMDEBUG_IMAGES_UP_TO = (2, 1)  # the last PyTorch training image version that installs smdebug
_TENSOR_FIELDS = ("DebugHookConfig", "DebugRuleConfigurations")


class DebuggerUnsupportedError(DogclfError, ValueError):
    """``--debugger`` for a training image that has no smdebug hook."""


def _version(text: str) -> tuple[int, int]:
    major, _, rest = text.partition(".")
    minor = rest.split(".", 1)[0]
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise DebuggerUnsupportedError(f"Cannot read the framework version {text!r} (expected e.g. 2.8.0)") from None


def image_has_smdebug(framework_version: str) -> bool:
    """Whether AWS's PyTorch training image of ``framework_version`` installs smdebug (up to 2.1)."""
    return _version(framework_version) <= SMDEBUG_IMAGES_UP_TO


@deprecated_log
def debugger_fields(
    region: str,
    s3_output_path: str,
    *,
    framework_version: str,
    distributed: bool,
) -> dict[str, Any]:
    """The Debugger and Profiler fields of a job's request, or a refusal when its image cannot feed them.

    Raises:
        DebuggerUnsupportedError: The image has no smdebug, saying what to use instead.
    """
    if not image_has_smdebug(framework_version):
        raise DebuggerUnsupportedError(
            f"--debugger needs the smdebug hook inside the training container, and the PyTorch {framework_version} "
            "training image has none (AWS's PyTorch training images install smdebug only up to 2.1, and dogclf "
            "needs PyTorch 2.3 or newer): Debugger's rule containers would receive no tensors and bill for nothing. "
            "Drop --debugger: dogclf's own rules (LossNotDecreasing, Overfit, VanishingGradient, ... with the same "
            "names and defaults) run inside the job anyway and print `rule=... status=IssuesFound` lines to its "
            "log; add --profile for a profiler report and --tensorboard for TensorBoard (see docs/debugging.md)."
        )
    from dogclf.diagnostics.sagemaker_requests import debugger_request

    fields = debugger_request(region, s3_output_path)
    if distributed:
        for key in _TENSOR_FIELDS:
            fields.pop(key, None)
        logger.info(
            "Debugger: no hook and no tensor rules for this distributed job (AWS: Debugger is not available for "
            "distributed training with checkpoints); the Profiler's system monitoring stays on."
        )
    return fields
