"""``dogclf sagemaker tune``'s own options beyond ``dogclf train``'s: objective, warm start, the trials' diagnostics.

argparse only; :func:`tuning_kwargs` turns the parsed options into keyword arguments of
:func:`~dogclf.sagemaker.tuning_job.launch_tuning_job` (the VPC, tags and KMS options are
:mod:`dogclf.sagemaker.job_settings`'s, shared with train).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_tuning_options", "local_trial_spec", "tuning_kwargs"]


def add_tuning_options(p: argparse.ArgumentParser) -> None:
    """Adds ``--objective-metric``, ``--objective-type``, ``--warm-start``, ``--warm-start-type``, ``--debugger``."""
    p.add_argument(
        "--objective-metric",
        default="valid_top1",
        metavar="METRIC",
        help="what to optimise: a metric of the training log, e.g. valid_top1 (default) or valid_loss",
    )
    p.add_argument(
        "--objective-type",
        choices=("Maximize", "Minimize"),
        default=None,
        help="default: Minimize for a *loss metric, else Maximize",
    )
    p.add_argument(
        "--warm-start",
        action="append",
        default=[],
        metavar="TUNING_JOB",
        help="start from an earlier tuning job's trials (repeatable, at most 5)",
    )
    p.add_argument(
        "--warm-start-type",
        choices=("IdenticalDataAndAlgorithm", "TransferLearning"),
        default="IdenticalDataAndAlgorithm",
        help="IdenticalDataAndAlgorithm (default: same data and image) or TransferLearning",
    )
    p.add_argument(
        "--debugger",
        action="store_true",
        help="each trial runs dogclf's rules (all) and profiler (the tuning API takes no Debugger settings)",
    )


def tuning_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The launch keyword arguments of the parsed tune options.

    Raises:
        ValueError: ``--tensorboard`` given an S3 location (a tuning job's trials log into their checkpoint prefix).
    """
    if args.tensorboard not in (None, "auto"):
        raise ValueError(
            f"--tensorboard {args.tensorboard}: a tuning job's trials write their TensorBoard logs under their own "
            "checkpoint prefix (SageMaker's tuning API has no TensorBoard setting); pass --tensorboard alone."
        )
    return {
        "objective": args.objective_metric,
        "objective_type": args.objective_type,
        "seed": args.seed,
        "warm_start": tuple(args.warm_start),
        "warm_start_type": args.warm_start_type,
        "tensorboard": args.tensorboard is not None,
        "debugger": args.debugger,
    }


def local_trial_spec(args: argparse.Namespace, spec: Any) -> Any:
    """``spec`` with what ``--tensorboard`` and ``--debugger`` add to the trials, for ``tune --local``.

    Raises:
        ValueError: ``--warm-start`` (there are no earlier SageMaker tuning jobs to start from here).
    """
    import dataclasses

    from dogclf.sagemaker.tuning_job import trial_diagnostics

    if args.warm_start:
        raise ValueError("--warm-start starts from SageMaker tuning jobs' trials, which --local does not have: drop it")
    tuning_kwargs(args)  # the same checks as on AWS
    added = trial_diagnostics(spec.hyperparameters, tensorboard=args.tensorboard is not None, debugger=args.debugger)
    return dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, **added})
