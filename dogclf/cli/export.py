"""``dogclf export``: a model directory as one ONNX file for other runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_export_parser", "run_export"]


def add_export_parser(sub: Any) -> None:
    """Adds ``dogclf export MODEL_DIR``."""
    ex = sub.add_parser("export", help="export a model to ONNX (dynamic batch) for other runtimes")
    ex.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory written by `dogclf train`")
    ex.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    ex.add_argument("-o", "--output", type=Path, default=None, help="file to write (default MODEL_DIR/model.onnx)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 or later)")
    ex.add_argument("--overwrite", action="store_true", help="replace the file if it exists")


def run_export(args: argparse.Namespace) -> int:
    """Runs ``dogclf export``; prints what was written."""
    from dogclf.artifact.export import export_model

    report = export_model(args.model, args.output, format=args.format, opset=args.opset, overwrite=args.overwrite)
    print(report.summary())
    return 0
