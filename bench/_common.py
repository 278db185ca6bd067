"""What every benchmark script shares: where the photos are, and a one-line description of the machine."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGEWOOF = REPO.parent / "shared" / "data" / "imagewoof" / "train"


def machine(device: Any = "cpu") -> str:
    """CPU model, cores, torch version and threads, bfloat16 support, and the device (``"auto"``, a name or a
    ``torch.device``)."""
    import torch

    from dogclf.hardware import describe_cpu, resolve_device

    device = resolve_device(str(device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"{describe_cpu()}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), {_openvino()}, "
        f"device: {where}"
    )


def _openvino() -> str:
    try:
        import openvino
    except ImportError:
        return "no OpenVINO"
    return f"OpenVINO {openvino.get_version().split('-')[0]}"
