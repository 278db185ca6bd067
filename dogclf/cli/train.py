"""``dogclf train``: its options and its run live in :mod:`dogclf.pipeline` (the SageMaker entry point shares them)."""

from __future__ import annotations

from typing import Any

from dogclf.pipeline.options import add_train_args
from dogclf.pipeline.train_command import run_train

__all__ = ["add_train_parser", "run_train"]


def add_train_parser(sub: Any) -> None:
    """Adds ``dogclf train``."""
    add_train_args(sub.add_parser("train", help="train a classifier on a data folder"))
