"""Command-line options that ``dogclf train`` and ``dogclf tune`` share: the data, the backbone, features, device.

argparse only; nothing heavy is imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_data_args", "fraction"]


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1, so ``--valid-fraction 20`` is refused before any work."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, e.g. 0.2, got {text!r}") from None
    if not 0.0 < value < 1.0:
        hint = f" (for {value:g}% pass {value / 100:g})" if 1.0 < value < 100.0 else ""
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), e.g. 0.2, got {text}{hint}")
    return value


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Adds the data, backbone, feature-extraction and device options to a subcommand's parser."""
    p.add_argument(
        "--data", required=True, type=Path, help="folder with train/ [valid/ test/], or one class-per-folder tree"
    )
    p.add_argument("--backbone", default="resnet18", help="backbone name (see `dogclf backbones`); default resnet18")
    p.add_argument(
        "--weights", default="imagenet", help="imagenet (download/cache), none (random), or a local weights file"
    )
    p.add_argument(
        "--valid-fraction",
        type=fraction,
        default=None,
        help="hold out this fraction of train for validation, e.g. 0.2 (for data without valid/)",
    )
    p.add_argument("--names", type=Path, default=None, help="file mapping class folders to display names")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep extracted features in the on-disk feature cache (default; `train` extracts features with a frozen "
        "backbone and no --augment); --no-cache keeps them in memory for this run only",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature-cache folder (default $XDG_CACHE_HOME/dogclf/features or ~/.cache/dogclf/features)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="feature-extraction precision (default auto: bf16 on CUDA and on CPUs with native bf16, else fp32)",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "torch", "openvino"],
        default="auto",
        help="runtime of the feature extraction (default auto: OpenVINO on x86 CPUs where installed, else torch; "
        "both give the same features, so they share the feature cache)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the split, sampling and heads (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1, at most 4)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
