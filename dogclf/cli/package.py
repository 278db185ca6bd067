"""``dogclf package``: the ``model.tar.gz`` the SageMaker PyTorch inference container serves."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_package_parser", "run_package"]


def add_package_parser(sub: Any) -> None:
    """Adds ``dogclf package MODEL_DIR -o ARCHIVE``."""
    pk = sub.add_parser("package", help="write the model.tar.gz the SageMaker PyTorch inference container serves")
    pk.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory written by `dogclf train`")
    pk.add_argument("-o", "--output", required=True, type=Path, help="archive to write, e.g. model.tar.gz")
    pk.add_argument("--overwrite", action="store_true", help="replace the archive if it exists")


def run_package(args: argparse.Namespace) -> int:
    """Runs ``dogclf package``; prints what the archive holds."""
    from dogclf.serving.package import format_report, package_model

    print(format_report(package_model(args.model, args.output, overwrite=args.overwrite)))
    return 0
