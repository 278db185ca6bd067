"""The options of the train and tune jobs: ``dogclf train``'s, and the data options ``dogclf tune`` shares.

The SageMaker entry point and the launchers parse a job's hyperparameters with :func:`train_parser`, so a job takes
exactly ``dogclf train``'s flags. argparse only; nothing heavy is imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dogclf.diagnostics.cli_args import add_diagnostics_args

__all__ = ["add_data_args", "add_train_args", "fraction", "train_parser"]


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


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Adds ``dogclf train``'s options (the SageMaker entry script parses the same ones)."""
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="model directory to write (also holds checkpoint.pt)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="the loop's weight decay (default 0)")
    _add_head_args(p)
    p.add_argument(
        "--freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze the backbone and train the head only (default); --no-freeze trains everything",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=0.1,
        help="with --no-freeze, backbone lr = lr x this (default 0.1)",
    )
    p.add_argument("--head-hidden", type=int, default=0, help="width of a hidden head layer (default 0: linear head)")
    p.add_argument("--dropout", type=float, default=0.0, help="head dropout probability (default 0)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="random resized crop + flip on training images (images then go through the backbone every epoch)",
    )
    p.add_argument(
        "--extract-batch-size", type=int, default=64, help="images per batch during feature extraction (default 64)"
    )
    p.add_argument(
        "--novelty",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the feature-space novelty score that flags unknown breeds (default); --no-novelty: softmax threshold",
    )
    p.add_argument(
        "--degraded-views",
        type=int,
        default=0,
        metavar="N",
        help="also fit the head on N degraded views (crop, 64-160 px, JPEG 15-60) of each training photo, extracted "
        "once and cached, for scores that hold better on users' photos (default 0)",
    )
    p.add_argument(
        "--degraded-smoothing",
        type=float,
        default=None,
        metavar="EPS",
        help="label smoothing of the degraded views' targets, the photos' kept one-hot (default 0.2 with the L-BFGS "
        "head, 0 with the epoch loop)",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where the per-epoch checkpoint.pt goes and --resume reads it (default: --out)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="also write history (JSON, CSV, plot), the held-out evaluation report and confusion matrix here",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (or --checkpoint-dir)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    add_diagnostics_args(p)


def train_parser(prog: str = "dogclf train", *, add_help: bool = True) -> argparse.ArgumentParser:
    """A parser of ``dogclf train``'s options alone (the SageMaker entry script reads its hyperparameters with it)."""
    parser = argparse.ArgumentParser(prog=prog, description="Train a classifier on a data folder.", add_help=add_help)
    add_train_args(parser)
    return parser


def _add_head_args(p: argparse.ArgumentParser) -> None:
    """How the head is fitted: the solver, the L-BFGS penalty, and the loop's recipe (see docs/training.md)."""
    from dogclf.training.config import CLASS_WEIGHTS, HEAD_SOLVERS, KEEP, LR_SCHEDULES, OPTIMIZERS

    p.add_argument(
        "--head-solver",
        choices=HEAD_SOLVERS,
        default="auto",
        help="auto (default): lbfgs for a frozen linear head on features, else loop; lbfgs: full-batch logistic "
        "regression with an L2 penalty (seconds; --epochs, --lr, --batch-size do not apply); loop: minibatch epochs",
    )
    p.add_argument(
        "--penalty-c",
        type=float,
        default=None,
        help="lbfgs: inverse L2 strength, as scikit-learn's C (default: chosen by cross-validation)",
    )
    p.add_argument("--cv-folds", type=int, default=5, help="lbfgs: folds of the cross-validation of C (default 5)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="the loop's optimizer (default adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default="constant", help="per-step learning rate (default constant)"
    )
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="epochs of linear lr warm-up (default 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the training loss (0)")
    p.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        default="none",
        help="balanced: weight each class's loss by n / (classes x n_class) (default none)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP,
        default="best",
        help="which epoch's weights to save: best (default, lowest valid_loss) or last",
    )
    p.add_argument(
        "--patience", type=int, default=None, help="stop after this many epochs without a lower valid_loss (off)"
    )
