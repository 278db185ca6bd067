"""The loop's training recipe: optimizer, learning-rate schedule with warm-up, and loss (smoothing, class weights).

Each is a small function of :class:`~dogclf.training.config.TrainConfig`, used by
:class:`~dogclf.training.loop.Trainer` on images and on cached features alike.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dogclf.model import DogClassifierNet
    from dogclf.training.config import TrainConfig

__all__ = ["balanced_class_weights", "lr_factor", "make_loss", "make_optimizer", "warmup_steps"]


def make_optimizer(model: DogClassifierNet, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over the head, plus the backbone at ``lr * backbone_lr_scale`` when unfrozen.

    ``adam`` adds ``weight_decay * w`` to the gradient (coupled L2), ``adamw`` decays the weights directly
    (decoupled), ``sgd`` uses ``momentum`` and coupled L2.
    """
    groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": config.lr}]
    if not model.frozen:
        groups.append({"params": list(model.backbone.parameters()), "lr": config.lr * config.backbone_lr_scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of linear warm-up: ``warmup_epochs`` worth of steps, rounded."""
    return round(config.warmup_epochs * steps_per_epoch)


def lr_factor(step: int, *, total_steps: int, warmup: int, schedule: str) -> float:
    """What the base learning rate is multiplied by for optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps (so the first step is not wasted at 0). Then
    ``constant`` stays at 1; ``cosine`` follows ``0.5 * (1 + cos(pi * p))`` with ``p = (step - warmup) /
    (total_steps - warmup)``: 1 on the first step after warm-up, near 0 on the last.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``n / (k * n_c)`` per class (scikit-learn's ``"balanced"``), ``k`` the classes present.

    The mean weight over the samples is then 1; a class with no samples gets 1.0.
    """
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weights.float()


def make_loss(config: TrainConfig, labels: torch.Tensor | None, num_classes: int) -> torch.nn.CrossEntropyLoss:
    """The training loss: cross-entropy with ``label_smoothing``, and ``"balanced"`` class weights from ``labels``.

    Raises:
        ValueError: Balanced class weights without the training labels.
    """
    weight = None
    if config.class_weight == "balanced":
        if labels is None:
            raise ValueError("class_weight='balanced' needs the training labels to count the classes.")
        weight = balanced_class_weights(labels, num_classes)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=float(config.label_smoothing))
