"""``dogclf backbones`` (list the backbones) and ``dogclf check-backbone`` (the contract checks, for plugin authors)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_backbones_parser", "add_check_backbone_parser", "run_backbones", "run_check_backbone"]


def add_backbones_parser(sub: Any) -> None:
    """Adds ``dogclf backbones [PATTERN] [--json]``."""
    bb = sub.add_parser("backbones", help="list the available backbones")
    bb.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'resnet*'")
    bb.add_argument("--json", action="store_true", help="print JSON")


def add_check_backbone_parser(sub: Any) -> None:
    """Adds ``dogclf check-backbone NAME``."""
    check = sub.add_parser("check-backbone", help="run the backbone contract checks (for plugin authors)")
    check.add_argument("name")


def run_backbones(args: argparse.Namespace) -> int:
    """Runs ``dogclf backbones``: a table (or JSON) of the backbones matching the pattern."""
    from dogclf.backbones.registry import list_backbones

    specs = list_backbones(args.pattern)
    if args.json:
        print(json.dumps([s.summary() for s in specs], indent=2))
        return 0
    rows = [("NAME", "INPUT", "FEATURES", "PRETRAINED WEIGHTS", "FROM")]
    rows += [
        (
            s.name,
            f"{s.preprocessing.input_size}px",
            str(s.num_features),
            s.weights_source,
            s.distribution,
        )
        for s in specs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\nAlso: any timm model as timm/<name>, e.g. timm/efficientnet_b0 (weights from the Hugging Face Hub).")
    return 0


def run_check_backbone(args: argparse.Namespace) -> int:
    """Runs ``dogclf check-backbone``: one line if the backbone passes, else an error."""
    from dogclf.model.contract import check_backbone

    report = check_backbone(args.name)
    print(
        f"OK {report['name']} ({report['distribution']}): {report['num_features']} features at "
        f"{report['input_size']}px, {report['parameters']:,} parameters"
    )
    return 0
