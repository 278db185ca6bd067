"""The ``dogclf`` command line: each command's parser (``add_<command>_parser``) and :func:`main`, which runs one.

Every command lives in its own module with its parser and its run function; ``tune`` and ``sagemaker`` keep theirs
in :mod:`dogclf.tuning.cli` and :mod:`dogclf.sagemaker.cli`. Only argparse is imported here; a command imports what
it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from dogclf._command import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, exit_quickly, run_command
from dogclf._version import __version__
from dogclf.cli.backbones import add_backbones_parser, add_check_backbone_parser, run_backbones, run_check_backbone
from dogclf.cli.demo import add_demo_parser, run_demo_command
from dogclf.cli.evaluate import add_evaluate_parser, run_evaluate
from dogclf.cli.export import add_export_parser, run_export
from dogclf.cli.package import add_package_parser, run_package
from dogclf.cli.predict import add_predict_parser, run_predict
from dogclf.cli.serve import add_serve_parser, run_serve
from dogclf.cli.train import add_train_parser, run_train
from dogclf.sagemaker.cli import add_sagemaker_parser, run_sagemaker  # argparse only; boto3 loads when it runs
from dogclf.tuning.cli import add_tune_parser, run_tune  # argparse only; Optuna is imported when `tune` runs

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "main"]

_PARSERS = (
    add_demo_parser,
    add_backbones_parser,
    add_check_backbone_parser,
    add_train_parser,
    add_evaluate_parser,
    add_predict_parser,
    add_serve_parser,
    add_export_parser,
    add_package_parser,
    add_tune_parser,
    add_sagemaker_parser,
)

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": run_demo_command,
    "backbones": run_backbones,
    "check-backbone": run_check_backbone,
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "serve": run_serve,
    "export": run_export,
    "package": run_package,
    "tune": run_tune,
    "sagemaker": run_sagemaker,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogclf",
        description="Turn a folder of dog photos into a dog-breed classifier: train a new head on a pretrained CNN, "
        "evaluate it, predict.",
    )
    parser.add_argument("--version", action="version", version=f"dogclf {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const=logging.WARNING,
        default=logging.INFO,
        help="print warnings only, not dogclf's progress messages (results, tables and progress bars still show)",
    )
    verbosity.add_argument(
        "-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG, help="also print debug messages"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in _PARSERS:
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        environ: The environment commands read (default ``os.environ``).
    """
    exit_quickly()
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.environ = os.environ if environ is None else environ
    return run_command(_COMMANDS[args.command], args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
