"""Options several commands share: ``--engine`` and ``--precision`` (``evaluate``, ``predict``, ``serve``)."""

from __future__ import annotations

import argparse

__all__ = ["add_engine_arg", "add_precision_arg"]


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    """``--engine``: the runtime of the backbone's forward passes (``auto`` picks the fastest on this machine)."""
    p.add_argument(
        "--engine",
        choices=("auto", "torch", "openvino", "onnxruntime"),
        default="auto",
        help="runtime of the forward passes; auto (default): OpenVINO on x86 CPUs where installed, else torch "
        "(CUDA, ARM); onnxruntime runs the model exported to ONNX (dogclf[onnx]); $DOGCLF_ENGINE sets the default",
    )


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision``: the precision of the forward passes (default: the model's, where this hardware runs it)."""
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default=None,
        help="default: the model's calibration precision where this hardware runs it natively (bf16 and fp32 "
        "scores agree; bf16 on CPUs with native bf16 and on CUDA, else fp32); auto: the same without the model",
    )
