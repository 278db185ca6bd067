"""Shared code of the ``train_<backbone>.py`` examples: train, evaluate on test, predict one image.

Each example script calls :func:`main` with its backbone name; run one of those, not this file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import dogclf
from dogclf.errors import DogclfError


def parse_args(backbone: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line shared by the examples."""
    parser = argparse.ArgumentParser(description=f"Train a dog-breed classifier on {backbone} with the dogclf API.")
    parser.add_argument(
        "--data", type=Path, required=True, help="folder with train/ [valid/ test/], or one class-per-folder tree"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument(
        "--weights", default="imagenet", help="imagenet (download or cache), none (random), or a local weights file"
    )
    parser.add_argument("--valid-fraction", type=float, default=None, help="hold out this fraction of train")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    return parser.parse_args(argv)


def run(backbone: str, args: argparse.Namespace) -> None:
    """Trains a new head on ``backbone``, reloads the saved model, evaluates it and predicts one image."""
    result = dogclf.train(
        args.data,
        backbone,
        args.out,
        config=dogclf.TrainConfig(epochs=args.epochs),
        weights=args.weights,
        valid_fraction=args.valid_fraction,
        overwrite=args.overwrite,
    )

    # Reload from disk, as a server would: no network, no pickle, no pretrained download.
    classifier = dogclf.load_model(result.model_dir, device="auto")
    if result.splits.test:
        report = dogclf.evaluate(classifier, result.splits.test)
        png = dogclf.plot_confusion_matrix(report, result.model_dir / "confusion_test.png")
        print(f"test: top-1 {report.top1:.1%}, top-5 {report.top5:.1%} on {report.n} images; confusion matrix {png}")

    sample = (result.splits.test or result.splits.valid)[0]
    ranked = classifier.predict(sample.path, top_k=3)[0]
    print(f"{sample.path} (true: {classifier.class_names[sample.label]}):")
    for prediction in ranked:
        print(f"  {prediction.score:6.1%}  {prediction.label}")


def main(backbone: str, argv: Sequence[str] | None = None) -> int:
    """Runs the example; returns the process exit code."""
    args = parse_args(backbone, argv)
    try:
        run(backbone, args)
    except (DogclfError, ValueError) as exc:  # dogclf's errors say what was wrong and what would work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
