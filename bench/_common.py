"""What every benchmark script shares: where the photos are, and a one-line description of the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGEWOOF = REPO.parent / "shared" / "data" / "imagewoof" / "train"


def machine(device: Any = "cpu") -> str:
    """CPU model, cores, torch version and threads, bfloat16 support, and the device (``"auto"``, a name or a
    ``torch.device``)."""
    import torch

    from dogclf.features.extract import cpu_has_native_bf16
    from dogclf.training.config import resolve_device

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            model = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), model)
    except OSError:
        pass
    device = resolve_device(str(device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}), native bf16: "
        f"{'yes' if cpu_has_native_bf16() else 'no'}, device: {where}"
    )
