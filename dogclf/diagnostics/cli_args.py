"""The ``dogclf train`` options of the diagnostics (rules, profiling, TensorBoard, smdebug). argparse only."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dogclf.diagnostics.session import Diagnostics

__all__ = ["add_diagnostics_args", "diagnostics_from_args"]


def add_diagnostics_args(p: argparse.ArgumentParser) -> None:
    """Adds ``--rules``, ``--rules-action``, ``--rule-param``, ``--profile``, ``--tensorboard``, ``--smdebug-out``."""
    group = p.add_argument_group("debugging and profiling (see docs/debugging.md)")
    group.add_argument(
        "--rules",
        default="default",
        metavar="SET",
        help="training rules named as SageMaker Debugger's: default (the cheap ones), all, none, or a comma list of "
        "rule names and sets, e.g. default,WeightUpdateRatio (default: default)",
    )
    group.add_argument(
        "--rules-action",
        choices=("warn", "stop"),
        default="warn",
        help="when a rule fires: warn (print and record it; default) or stop training after that epoch",
    )
    group.add_argument(
        "--rule-param",
        action="append",
        default=[],
        metavar="RULE.PARAM=VALUE",
        help="override a rule parameter, e.g. Overfit.ratio_threshold=0.2 (repeatable)",
    )
    group.add_argument(
        "--profile",
        action="store_true",
        help="write profile/report.html: time per phase and per step, system use, top operators, findings",
    )
    group.add_argument(
        "--profile-steps", type=int, default=5, help="training steps the torch.profiler window records (default 5)"
    )
    group.add_argument("--tensorboard", type=Path, default=None, metavar="DIR", help="log TensorBoard scalars to DIR")
    group.add_argument(
        "--smdebug-out",
        type=Path,
        default=None,
        metavar="DIR",
        help='save tensors with SageMaker Debugger\'s smdebug hook to DIR (needs "dogclf[debug]")',
    )


def diagnostics_from_args(args: argparse.Namespace) -> Diagnostics:
    """The :class:`~dogclf.diagnostics.Diagnostics` the parsed options ask for.

    Raises:
        ValueError: For a malformed ``--rule-param`` or a bad ``--profile-steps``.
    """
    from dogclf.diagnostics.rules import parse_rule_param
    from dogclf.diagnostics.session import Diagnostics

    params: dict[str, dict[str, Any]] = {}
    for text in args.rule_param:
        rule, name, value = parse_rule_param(text)
        params.setdefault(rule, {})[name] = value
    if args.profile_steps < 1:
        raise ValueError(f"--profile-steps must be >= 1, got {args.profile_steps}")
    return Diagnostics(
        rules=args.rules,
        rule_params=params,
        rules_action=args.rules_action,
        profile=args.profile,
        profile_steps=args.profile_steps,
        tensorboard=args.tensorboard,
        smdebug_out=args.smdebug_out,
    )
