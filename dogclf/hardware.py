"""The device and what this machine's CPU can do, read once and overridable: the one place dogclf asks the hardware.

A leaf module: it imports nothing of dogclf, so every layer may use it.

* :func:`resolve_device`: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` as a ``torch.device``, with an error naming the
  devices this machine has.

Precision and runtime choices follow the hardware, not the machine a model was trained on:

* :func:`cpu_has_native_bf16`: x86 AVX-512 BF16 or AMX-BF16. Without it, bfloat16 maths on a CPU is emulated and
  slower than float32, so dogclf runs float32 there.
* :func:`openvino_usable`: OpenVINO is installed and this is an x86-64 CPU (the CPU plugin dogclf runs).

``DOGCLF_CPU_BF16=0`` or ``=1`` overrides the bfloat16 detection (tests run both paths on any machine; a user can
rule bfloat16 out), and ``DOGCLF_ENGINE=torch|openvino`` sets the default runtime of every forward pass.
This module imports nothing heavy: torch and OpenVINO are imported inside the function that needs them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BF16_SWITCH",
    "ENGINE_SWITCH",
    "cpu_flags",
    "cpu_has_native_bf16",
    "cpu_model",
    "describe_cpu",
    "openvino_usable",
    "resolve_device",
]

BF16_SWITCH = "DOGCLF_CPU_BF16"
ENGINE_SWITCH = "DOGCLF_ENGINE"
_X86 = ("x86_64", "amd64", "i686", "i386")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            line = next((line for line in file if line.startswith(("flags", "Features"))), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[-1].split())


@functools.cache
def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 9R14``."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def _detected_bf16() -> bool:
    import torch

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None:
            with contextlib.suppress(Exception):
                if check():
                    return True
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _switch(environ: Mapping[str, str], name: str) -> bool | None:
    raw = environ.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return None


def cpu_has_native_bf16(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this CPU runs bfloat16 matrix maths natively (x86 AVX-512 BF16 or AMX-BF16).

    ``DOGCLF_CPU_BF16=0|1`` in ``environ`` overrides the detection.
    """
    forced = _switch(environ, BF16_SWITCH)
    return _detected_bf16() if forced is None else forced


@functools.cache
def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def openvino_usable() -> bool:
    """Whether OpenVINO's CPU plugin can run here: the package is installed and the CPU is x86."""
    return platform.machine().lower() in _X86 and _openvino_installed()


def describe_cpu(environ: Mapping[str, str] = os.environ) -> str:
    """One line for benchmark output: model, cores, the SIMD flags that decide speed, and native bf16.

    E.g. ``AMD EPYC (2 cores) flags: avx2 avx512f avx512_bf16 avx512_vnni; native bf16: yes``.
    """
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd")
    shown = " ".join(flag for flag in wanted if flag in cpu_flags()) or "(unknown)"
    forced = _switch(environ, BF16_SWITCH)
    bf16 = "yes" if cpu_has_native_bf16(environ) else "no"
    note = f" (forced by {BF16_SWITCH})" if forced is not None else ""
    return f"{cpu_model()} ({os.cpu_count()} cores) flags: {shown}; native bf16: {bf16}{note}"


def resolve_device(name: str = "auto") -> Any:
    """Turns ``"auto"``/``"cpu"``/``"cuda[:N]"`` into a ``torch.device``.

    Raises:
        ValueError: If CUDA is asked for and not available, or the name is unknown.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} was asked for, but this torch has no usable CUDA device; use --device cpu or auto."
            )
        index = name.partition(":")[2]
        count = torch.cuda.device_count()
        if index and not (index.isdigit() and int(index) < count):
            raise ValueError(f"--device {name}: no such CUDA device; this machine has cuda:0 to cuda:{count - 1}.")
        return torch.device(name)
    raise ValueError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
