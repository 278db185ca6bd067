"""Compatibility shims for the environments dogclf runs in."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

_TORCHVISION_OP_LIBRARY: Any = None
_MISSING_OP_MESSAGE = "torchvision::nms"


def import_torchvision() -> ModuleType:
    """Import torchvision, working around a CUDA-only wheel on a CPU-only torch.

    The torchvision 0.28.0 wheel on PyPI is built against CUDA torch. On the CPU
    build of torch its native extension cannot load, and ``import torchvision``
    then fails with ``operator torchvision::nms does not exist`` while registering
    fake kernels for two detection ops. Only on that error, this defines the two
    missing op schemas (``nms`` and ``qnms``) and imports again. Models,
    transforms and datasets then work; ``torchvision.ops`` and
    ``torchvision.io.decode_jpeg`` stay unavailable, so dogclf decodes images
    with Pillow.

    Returns:
        The imported ``torchvision`` module.
    """
    global _TORCHVISION_OP_LIBRARY
    try:
        import torchvision
    except RuntimeError as exc:
        if _MISSING_OP_MESSAGE not in str(exc):
            raise
    else:
        return torchvision

    import torch

    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    if _TORCHVISION_OP_LIBRARY is None:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OP_LIBRARY = library
    import torchvision

    return torchvision


def import_timm() -> ModuleType:
    """Import timm (which imports torchvision) through :func:`import_torchvision`."""
    import_torchvision()
    import timm

    return timm
