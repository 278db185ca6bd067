"""Which AWS PyTorch container a job runs in, and whether SageMaker knows an instance type.

Image URIs come from the SageMaker SDK's own tables (``sagemaker.core.image_uris``, offline); the instance types
SageMaker accepts come from botocore's SageMaker service model (the ``TrainingInstanceType`` and
``ProductionVariantInstanceType`` enums), so a typo fails here with the closest names instead of in AWS.
"""

from __future__ import annotations

import difflib

from dogclf.errors import DogclfError

__all__ = [
    "INFERENCE_FRAMEWORK_VERSION",
    "PY_VERSION",
    "TRAINING_FRAMEWORK_VERSION",
    "UnknownInstanceTypeError",
    "check_instance_type",
    "gpus_per_instance",
    "inference_image",
    "training_image",
]

TRAINING_FRAMEWORK_VERSION = "2.8.0"
INFERENCE_FRAMEWORK_VERSION = "2.6.0"  # the newest PyTorch inference image the SDK knows
PY_VERSION = "py312"


class UnknownInstanceTypeError(DogclfError, ValueError):
    """An instance type SageMaker does not offer for this use."""


def _known(kind: str) -> list[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = "TrainingInstanceType" if kind == "training" else "ProductionVariantInstanceType"
    return list(model.shape_for(shape).enum)


def check_instance_type(instance_type: str, kind: str = "training") -> str:
    """Returns ``instance_type`` if SageMaker offers it for ``kind`` (``"training"`` or ``"inference"``).

    Raises:
        UnknownInstanceTypeError: Naming the closest known types.
    """
    known = _known(kind)
    if instance_type in known:
        return instance_type
    close = difflib.get_close_matches(instance_type, known, n=3) or ["ml.m5.large", "ml.m5.xlarge", "ml.g5.xlarge"]
    raise UnknownInstanceTypeError(
        f"SageMaker has no {kind} instance type {instance_type!r}; did you mean {', '.join(close)}? "
        "(https://aws.amazon.com/sagemaker/pricing/ lists them)"
    )


def gpus_per_instance(instance_type: str, region: str) -> int:
    """GPUs on one instance of ``instance_type`` (0 for CPU instances), from the SDK's table."""
    from sagemaker.core import instance_types_gpu_info

    return int(instance_types_gpu_info.retrieve(region).get(instance_type, {}).get("Count", 0))


def _image(scope: str, version: str, region: str, instance_type: str) -> str:
    from dogclf._extras import require

    image_uris = require("sagemaker.core.image_uris", extra="sagemaker", purpose="Finding the PyTorch container")
    return str(
        image_uris.retrieve(
            "pytorch", region, version=version, py_version=PY_VERSION, instance_type=instance_type, image_scope=scope
        )
    )


def training_image(region: str, instance_type: str, version: str = TRAINING_FRAMEWORK_VERSION) -> str:
    """The AWS PyTorch training image for ``region`` and ``instance_type`` (CPU or GPU build)."""
    return _image("training", version, region, check_instance_type(instance_type, "training"))


def inference_image(region: str, instance_type: str, version: str = INFERENCE_FRAMEWORK_VERSION) -> str:
    """The AWS PyTorch inference image for ``region`` and ``instance_type`` (CPU or GPU build)."""
    return _image("inference", version, region, check_instance_type(instance_type, "inference"))
