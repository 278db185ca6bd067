"""The ``dogclf tune`` subcommand: its arguments and what it runs (wired into :mod:`dogclf.cli.app`).

Building the parser imports nothing heavy; Optuna and torch are imported when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from dogclf.pipeline.options import add_data_args

__all__ = ["add_tune_parser", "run_tune"]

EXIT_INTERRUPTED = 130


def add_tune_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds ``tune`` to the ``dogclf`` subparsers and returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "tune",
        help="search head hyperparameters with Optuna on cached features (resumable)",
        description="Search learning rate, batch size, epochs, weight decay and head dropout with Optuna (TPE, "
        "median pruning) on backbone features extracted once. The study is stored (default OUT/study.db), so "
        "rerunning the same command continues it.",
    )
    add_data_args(p)
    p.add_argument("--trials", required=True, type=int, help="finished trials the study should hold (a target)")
    p.add_argument("--out", required=True, type=Path, help="folder for study.db, best_params.json, trials.csv, ...")
    p.add_argument(
        "--storage",
        default=None,
        help="study database URL shared by several machines, e.g. postgresql://user@host/db (default "
        "sqlite:///OUT/study.db)",
    )
    p.add_argument("--study-name", default=None, help="study name (default dogclf-<backbone>)")
    p.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds")
    p.add_argument(
        "--space",
        default=None,
        help="search space: a preset (default, seed-resnet18, seed-inception) or a JSON file (see docs/tuning.md)",
    )
    p.add_argument(
        "--metric",
        choices=["valid_top1", "valid_loss"],
        default="valid_top1",
        help="objective: this metric after a trial's last epoch (default valid_top1, maximised)",
    )
    p.add_argument(
        "--train-best", action="store_true", help="afterwards train the final model with the best values into OUT/model"
    )
    return p


def run_tune(args: argparse.Namespace) -> int:
    """Runs ``dogclf tune``; returns 0, or 130 after Ctrl-C with the command that continues."""
    from dogclf.tuning.space import resolve_space
    from dogclf.tuning.study import DEFAULT_STUDY_DB, tune

    space = resolve_space(args.space)
    try:
        result = tune(
            args.data,
            args.backbone,
            args.out,
            trials=args.trials,
            space=space,
            storage=args.storage,
            study_name=args.study_name,
            timeout=args.timeout,
            seed=args.seed,
            valid_fraction=args.valid_fraction,
            names=args.names,
            weights=args.weights,
            cache=args.cache,
            cache_dir=args.cache_dir,
            metric=args.metric,
            train_best=args.train_best,
            device=args.device,
            num_workers=args.workers,
            precision=args.precision,
            engine=args.engine,
            strict=args.strict,
            progress=args.progress,
        )
    except KeyboardInterrupt:
        where = "the --storage database" if args.storage else str(args.out / DEFAULT_STUDY_DB)
        print(
            f"\nInterrupted. The finished trials are stored in {where}; the same command continues the study:\n"
            f"  {shlex.join(['dogclf', *args.argv])}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts.items()))
    print(
        f"Study {result.study_name}: {counts}; best trial {result.best_trial}: {result.metric}={result.best_value:.4f}"
    )
    print(f"Best hyperparameters: {result.best_params_path}")
    if result.model_dir is not None:
        print(f"Model trained with them: {result.model_dir}")
    return 0
