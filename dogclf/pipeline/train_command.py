"""``dogclf train`` as a command: its parsed options in, a training run out, Ctrl-C answered with how to go on.

The ``dogclf`` command line and the SageMaker training entry point (:mod:`dogclf.sagemaker.entry`) both run it, so
a training job parses the same flags, prints the same lines and exits with the same codes as ``dogclf train``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence

from dogclf._command import EXIT_INTERRUPTED, exit_quickly, run_command
from dogclf.diagnostics.cli_args import diagnostics_from_args
from dogclf.pipeline.options import train_parser

__all__ = ["LOOP_OPTIONS", "main", "run_train"]


# Options only the epoch loop reads: given on the command line, they ask for it (as a SageMaker job's hyperparameters
# lr, batch-size and epochs do), instead of being ignored by the default L-BFGS fit.
LOOP_OPTIONS = (
    "--lr",
    "--batch-size",
    "--epochs",
    "--weight-decay",
    "--optimizer",
    "--momentum",
    "--lr-schedule",
    "--warmup-epochs",
    "--label-smoothing",
    "--keep",
    "--patience",
)


def _head_solver(args: argparse.Namespace) -> str:
    """``--head-solver``; ``auto`` becomes ``loop`` when the command line sets an option only the loop reads."""
    given = [a.split("=", 1)[0] for a in args.argv if a.split("=", 1)[0] in LOOP_OPTIONS]
    if args.head_solver != "auto" or not given:
        return str(args.head_solver)
    print(
        f"{', '.join(dict.fromkeys(given))} given: the head is trained by the epoch loop (--head-solver loop); "
        "without them a frozen linear head is fitted by L-BFGS with a cross-validated penalty.",
        flush=True,
    )
    return "loop"


def run_train(args: argparse.Namespace) -> int:
    """Runs ``dogclf train`` with parsed options (``args.argv`` and ``args.environ`` set); returns its exit code."""
    from dogclf.model import HeadConfig
    from dogclf.pipeline import train
    from dogclf.training.config import TrainConfig

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        backbone_lr_scale=args.backbone_lr_scale,
        seed=args.seed,
        device=args.device,
        num_workers=args.workers,
        augment=args.augment,
        head_solver=_head_solver(args),
        penalty_c=args.penalty_c,
        cv_folds=args.cv_folds,
        optimizer=args.optimizer,
        momentum=args.momentum,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        class_weight=args.class_weight,
        keep=args.keep,
        patience=args.patience,
    )
    try:
        train(
            args.data,
            args.backbone,
            args.out,
            config=config,
            weights=args.weights,
            freeze=args.freeze,
            head=HeadConfig(hidden=args.head_hidden, dropout=args.dropout),
            valid_fraction=args.valid_fraction,
            names=args.names,
            strict=args.strict,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=args.progress,
            cache=args.cache,
            cache_dir=args.cache_dir,
            precision=args.precision,
            engine=args.engine,
            extract_batch_size=args.extract_batch_size,
            novelty=args.novelty,
            degraded_views=args.degraded_views,
            degraded_smoothing=args.degraded_smoothing,
            environ=args.environ,
            checkpoint_dir=args.checkpoint_dir,
            output_dir=args.output_dir,
            diagnostics=diagnostics_from_args(args),
        )
    except KeyboardInterrupt:
        argv = list(args.argv)  # not sys.argv: under `python -m dogclf` its [0] is the path of __main__.py
        checkpoint = (args.checkpoint_dir or args.out) / "checkpoint.pt"
        if checkpoint.is_file():
            command = shlex.join(["dogclf", *argv] if "--resume" in argv else ["dogclf", *argv, "--resume"])
            print(
                f"\nInterrupted. Finished epochs are saved in {checkpoint}; continue with:\n  {command}",
                file=sys.stderr,
            )
        else:
            command = shlex.join(["dogclf", *(a for a in argv if a != "--resume")])
            cached = args.freeze and not args.augment and args.cache
            saved = (
                "the features extracted so far are kept in the feature cache, and a rerun continues from them"
                if cached
                else "nothing was saved"
            )
            print(
                f"\nInterrupted before the first epoch finished; {saved}. Start again with:\n  {command}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Runs ``dogclf train ARGV`` as the ``dogclf`` command line does; returns the exit code.

    Args:
        argv: ``dogclf train``'s arguments (without ``train``).
        environ: The environment the run reads.
    """
    exit_quickly()
    args = train_parser().parse_args(argv)
    args.command = "train"
    args.argv = ["train", *argv]
    args.environ = environ
    return run_command(run_train, args)
