"""Which numeric precision an inference pass runs in, and why.

A model runs in the precision it was calibrated in (recorded in ``config.json`` under ``calibration.precision``, or
the feature path's ``training.precision`` for older models) when this hardware runs that precision natively, and in
the other one otherwise: a bf16-calibrated model runs fp32 on a CPU without native bfloat16 (emulated bf16 is several
times slower), an fp32-calibrated one bf16 on a CPU with it. The temperature and unknown threshold stay: on 300
Imagewoof photos (efficientnet_lite0) bf16 and fp32 probabilities differed by 1.2e-3 on average (at most 0.056), and
1 or 2 top-1 answers in 300 changed. A ``--precision`` given by the user overrides the choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dogclf.artifact.config import ModelConfig, config_section
from dogclf.errors import DogclfError

__all__ = ["PRECISIONS", "InvalidPrecisionError", "PrecisionChoice", "choose_precision", "recorded_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class InvalidPrecisionError(DogclfError, ValueError):
    """A precision that is unknown or that the device cannot run."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a pass runs in (``"fp32"``, ``"bf16"`` or ``"fp16"``) and why, for the output to say."""

    precision: str
    reason: str

    def describe(self) -> str:
        """E.g. ``bf16 (as calibrated)``."""
        return f"{self.precision} ({self.reason})"


def recorded_precision(config: ModelConfig | Mapping[str, Any]) -> str | None:
    """The precision a model directory was calibrated in, or ``None`` when its config does not say.

    Args:
        config: The model's config, or a dict of part of one (``{"calibration": {"precision": "bf16"}}``).
    """
    for name in ("calibration", "training"):
        section = config_section(config, name)
        if section is not None and section.precision in ("fp32", "bf16", "fp16"):
            return str(section.precision)
    return None


def _native_bf16() -> bool:
    from dogclf.hardware import cpu_has_native_bf16

    return cpu_has_native_bf16()


def _auto(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and _native_bf16() else "fp32"


def _check_runs(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise InvalidPrecisionError(
            f"precision fp16 needs a CUDA device, but the device is {device}; use bf16, fp32 or auto"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidPrecisionError(f"precision bf16: the GPU {device} has no bfloat16 support; use fp16, fp32 or auto")


def choose_precision(
    requested: str | None, config: ModelConfig | Mapping[str, Any], device: torch.device
) -> PrecisionChoice:
    """The precision to run a model in on ``device``.

    Args:
        requested: The user's ``--precision`` (``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``), or ``None`` for
            the precision the model was calibrated in.
        config: The model directory's config (or a dict of part of one).
        device: Where it runs.

    Raises:
        InvalidPrecisionError: An unknown precision, or one the device cannot run.
    """
    if requested is not None:
        if requested not in PRECISIONS:
            raise InvalidPrecisionError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
        if requested == "auto":
            return PrecisionChoice(_auto(device), "auto for this hardware")
        _check_runs(requested, device)
        return PrecisionChoice(requested, "as requested")
    recorded = recorded_precision(config)
    if recorded is None:
        return PrecisionChoice("fp32", "the model records no calibration precision")
    if recorded == "fp16" and device.type != "cuda":
        fallback = _auto(device)
        return PrecisionChoice(fallback, "calibrated in fp16, which needs CUDA")
    if recorded == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return PrecisionChoice("fp16", "calibrated in bf16, which this GPU lacks")
    if recorded == "bf16" and device.type == "cpu" and not _native_bf16():
        return PrecisionChoice("fp32", "calibrated in bf16; this CPU has no native bf16, fp32 scores differ ~1e-3")
    if recorded == "fp32" and device.type == "cpu" and _native_bf16():
        return PrecisionChoice("bf16", "calibrated in fp32; native bf16 on this CPU, its scores differ ~1e-3")
    return PrecisionChoice(recorded, "as calibrated")
