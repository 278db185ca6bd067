"""``train()``: folder -> splits -> model -> trained head -> model directory."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dogclf.artifact import CONFIG_NAME, WEIGHTS_NAME, save_model
from dogclf.backbones.registry import get_backbone
from dogclf.backbones.spec import BackboneSpec
from dogclf.backbones.weights import weights_label
from dogclf.callbacks import Callback, EpochLogLine, ProgressBars
from dogclf.checkpoint import CHECKPOINT_NAME
from dogclf.data.folder import DataSplits, load_splits
from dogclf.errors import ModelDirError
from dogclf.model import HeadConfig, build_model
from dogclf.train_config import TrainConfig
from dogclf.trainer import Trainer

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model_dir: The saved model directory.
        history: Per-epoch metrics.
        splits: The data as it was read (skipped files included).
        test: Test-split metrics (``top1``, ``top5``, ``n``), if there was a test split.
    """

    model_dir: Path
    history: list[dict[str, float]]
    splits: DataSplits
    test: dict[str, Any] | None = None


def _print(message: str) -> None:
    print(message, flush=True)


def _describe_skipped(splits: DataSplits, log: Callable[[str], None]) -> None:
    if not splits.skipped:
        return
    log(f"Skipping {len(splits.skipped)} unreadable image file(s):")
    for path, reason in splits.skipped[:50]:
        log(f"  skipped {path}: {reason}")
    if len(splits.skipped) > 50:
        log(f"  ... and {len(splits.skipped) - 50} more")


def _check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume or overwrite:
        return
    existing = [name for name in (WEIGHTS_NAME, CONFIG_NAME, CHECKPOINT_NAME) if (out / name).exists()]
    if existing:
        raise ModelDirError(
            f"Output folder {str(out)!r} already holds {', '.join(existing)}. Pass --resume to continue an "
            "interrupted run, --overwrite to replace it, or choose another --out."
        )


def train(
    data_dir: str | os.PathLike[str],
    backbone: str | BackboneSpec,
    out_dir: str | os.PathLike[str],
    *,
    config: TrainConfig | None = None,
    weights: str | os.PathLike[str] | None = "imagenet",
    freeze: bool = True,
    head: HeadConfig | None = None,
    valid_fraction: float | None = None,
    names: Mapping[str, str] | str | os.PathLike[str] | None = None,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
    log: Callable[[str], None] = _print,
) -> TrainResult:
    """Trains a classifier on a data folder and saves it as a model directory.

    Args:
        data_dir: Folder with ``train/`` (and ``valid/``, ``test/``), or one
            class-per-subfolder tree (then pass ``valid_fraction``).
        backbone: Backbone name or spec.
        out_dir: Model directory to write; also holds the per-epoch ``checkpoint.pt``.
        config: Hyperparameters (defaults: 5 epochs, batch 32, Adam lr 1e-3).
        weights: ``"imagenet"``, ``None``/``"none"`` or a local weights file.
        freeze: Freeze the backbone and train the head only.
        head: Head shape (linear by default).
        valid_fraction: Hold out this fraction of train for validation.
        names: Folder -> display name map or names file.
        strict: Fail on unreadable images instead of skipping them.
        resume: Continue from ``out_dir/checkpoint.pt``.
        overwrite: Replace an existing model in ``out_dir``.
        callbacks: Extra training callbacks (e.g. debugger hooks).
        progress: Progress bars; ``None`` shows them when stderr is a terminal.
        log: Where human-readable messages go.

    Returns:
        The result, with the model directory path.
    """
    config = config or TrainConfig()
    head = head or HeadConfig()
    out = Path(out_dir)
    _check_out_dir(out, resume=resume, overwrite=overwrite)
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone

    log(f"Reading {data_dir} and decoding every image once to find unreadable files ...")
    splits = load_splits(data_dir, valid_fraction=valid_fraction, names=names, seed=config.seed, strict=strict)
    _describe_skipped(splits, log)
    log(
        f"Data {splits.root}: {len(splits.classes)} classes, {len(splits.train)} train, {len(splits.valid)} valid "
        f"({splits.valid_source}), {len(splits.test)} test images"
        + (f"; {len(splits.skipped)} unreadable file(s) skipped" if splits.skipped else "")
    )

    recorded_weights = weights_label(weights)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    checkpoint = out / CHECKPOINT_NAME
    resuming = resume and checkpoint.is_file()
    if resume and not resuming:
        raise ModelDirError(
            f"--resume was given but {str(checkpoint)!r} does not exist. Run without --resume to start training."
        )
    model = build_model(
        spec,
        len(splits.classes),
        weights=None if resuming else weights,  # a resumed run takes every weight from the checkpoint
        freeze=freeze,
        head=head,
    )
    fingerprint = {
        "backbone": spec.name,
        "weights": recorded_weights,
        "freeze": freeze,
        "head": head.to_dict(),
        "classes": [c.folder for c in splits.classes],
        "n_train": len(splits.train),
        "n_valid": len(splits.valid),
        **{k: v for k, v in config.to_dict().items() if k not in ("epochs", "device", "num_workers")},
    }
    show_bars = sys.stderr.isatty() if progress is None else progress
    all_callbacks: list[Callback] = [EpochLogLine()]
    if show_bars:
        all_callbacks.insert(0, ProgressBars())
    trainer = Trainer(
        model,
        train_samples=splits.train,
        valid_samples=splits.valid,
        preprocessing=spec.preprocessing,
        config=config,
        checkpoint_path=checkpoint,
        callbacks=[*all_callbacks, *callbacks],
        fingerprint=fingerprint,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if resuming:
        done = trainer.resume()
        log(f"Resuming from {checkpoint} after epoch {done} of {config.epochs}")
    log(
        f"Training {spec.name} ({'frozen backbone' if freeze else 'whole network'}, {trainable:,} trainable "
        f"parameters) for {config.epochs} epochs on {trainer.device}: batch {config.batch_size}, Adam lr {config.lr:g}"
    )
    history = trainer.fit()

    test_metrics = None
    if splits.test:
        from dogclf.classifier import Classifier
        from dogclf.evaluation import evaluate

        classifier = Classifier(model, spec=spec, class_names=splits.class_names, device=trainer.device)
        report = evaluate(classifier, splits.test, batch_size=config.batch_size, num_workers=config.workers())
        test_metrics = {"top1": report.top1, "top5": report.top5, "n": report.n, "loss": report.loss}
        log(f"test_top1={report.top1:.4f} test_top5={report.top5:.4f} n={report.n}")

    final = history[-1] if history else {}
    save_model(
        model,
        out,
        spec=spec,
        classes=splits.classes,
        head=head.to_dict(),
        metrics={"final": final, "history": history, "test": test_metrics},
        training={
            **config.to_dict(),
            "weights": recorded_weights,
            "freeze": freeze,
            "data": str(splits.root),
            "valid_source": splits.valid_source,
            "valid_fraction": valid_fraction if splits.valid_source.startswith("fraction") else None,
            "n_train": len(splits.train),
            "n_valid": len(splits.valid),
            "n_test": len(splits.test),
            "skipped_files": len(splits.skipped),
        },
    )
    log(f"Saved model to {out}")
    return TrainResult(model_dir=out, history=history, splits=splits, test=test_metrics)
