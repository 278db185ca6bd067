"""Training hyperparameters and device selection."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CLASS_WEIGHTS",
    "HEAD_SOLVERS",
    "KEEP",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TrainConfig",
]

HEAD_SOLVERS = ("auto", "lbfgs", "loop")
"""``auto``: L-BFGS for a frozen linear head trained on features, else the epoch loop."""
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTS = ("none", "balanced")
KEEP = ("best", "last")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of a training run.

    Defaults: a frozen backbone; its linear head fitted by L-BFGS with a cross-validated L2 penalty when it trains
    on features, else Adam over epochs.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Images per optimizer step.
        lr: Adam learning rate of the head.
        weight_decay: Adam weight decay.
        backbone_lr_scale: With an unfrozen backbone, its learning rate is ``lr * backbone_lr_scale``.
        seed: Seeds the head's initialisation, shuffling, dropout and the valid split.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        num_workers: DataLoader worker processes; ``None`` picks from the CPU count.
        augment: Random resized crop and flip for training images.
        head_solver: ``"auto"`` (default): ``"lbfgs"`` for a frozen linear head (no hidden layer, no dropout) trained
            on features, else ``"loop"``. ``"lbfgs"``: full-batch multinomial logistic regression with an L2 penalty
            (:mod:`dogclf.training.lbfgs`). ``"loop"``: minibatch epochs with ``optimizer``.
        penalty_c: The L-BFGS head's inverse L2 strength, as scikit-learn's ``C`` (the fit minimises
            ``C * sum(cross-entropy) + ||W||^2 / 2``); ``None`` (default) picks it by ``cv_folds``-fold
            cross-validation over :data:`dogclf.training.lbfgs.C_GRID`.
        cv_folds: Folds of that cross-validation (>= 2).
        optimizer: The loop's optimizer: ``"adam"`` (L2 ``weight_decay`` added to the gradient), ``"adamw"``
            (decoupled weight decay) or ``"sgd"`` (with ``momentum``).
        momentum: SGD momentum.
        lr_schedule: ``"constant"`` or ``"cosine"`` (per step, down to 0 at the last step), both after
            ``warmup_epochs`` of linear warm-up from 0.
        warmup_epochs: Epochs (may be fractional) of linear learning-rate warm-up.
        label_smoothing: Label smoothing of the training loss, in [0, 1).
        class_weight: ``"balanced"`` weights each class's loss by ``n / (classes * n_class)``, so a class with fewer
            photos counts as much as the others; ``"none"`` weights every photo alike.
        keep: ``"best"`` (default): the saved model is the epoch with the lowest validation loss; ``"last"``: the last
            epoch. Without a validation split, the last epoch.
        patience: Stop when the validation loss has not improved for this many epochs; ``None``: never stop early.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    backbone_lr_scale: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    augment: bool = False
    head_solver: str = "auto"
    penalty_c: float | None = None
    cv_folds: int = 5
    optimizer: str = "adam"
    momentum: float = 0.9
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weight: str = "none"
    keep: str = "best"
    patience: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an int >= 1, got {self.epochs!r}"),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"batch size must be an int >= 1, got {self.batch_size!r}",
            ),
            (float(self.lr) > 0, f"learning rate must be > 0, got {self.lr!r}"),
            (float(self.weight_decay) >= 0, f"weight decay must be >= 0, got {self.weight_decay!r}"),
            (float(self.backbone_lr_scale) > 0, f"backbone lr scale must be > 0, got {self.backbone_lr_scale!r}"),
            (
                self.num_workers is None or (isinstance(self.num_workers, int) and self.num_workers >= 0),
                f"num_workers must be an int >= 0, got {self.num_workers!r}",
            ),
            *self._head_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _head_checks(self) -> list[tuple[bool, str]]:
        def one_of(name: str, choices: tuple[str, ...]) -> tuple[bool, str]:
            value = getattr(self, name)
            return value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}"

        c = self.penalty_c
        return [
            one_of("head_solver", HEAD_SOLVERS),
            one_of("optimizer", OPTIMIZERS),
            one_of("lr_schedule", LR_SCHEDULES),
            one_of("class_weight", CLASS_WEIGHTS),
            one_of("keep", KEEP),
            (c is None or (_is_number(c) and c > 0), f"penalty C must be a number > 0 (or None for CV), got {c!r}"),
            (
                isinstance(self.cv_folds, int) and self.cv_folds >= 2,
                f"cv_folds must be an int >= 2, got {self.cv_folds!r}",
            ),
            (
                _is_number(self.momentum) and 0 <= self.momentum < 1,
                f"momentum must be in [0, 1), got {self.momentum!r}",
            ),
            (
                _is_number(self.warmup_epochs) and self.warmup_epochs >= 0,
                f"warmup_epochs must be a number >= 0, got {self.warmup_epochs!r}",
            ),
            (
                _is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                f"label smoothing must be in [0, 1), got {self.label_smoothing!r}",
            ),
            (
                self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
                f"patience must be an int >= 1 (or None: no early stopping), got {self.patience!r}",
            ),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return asdict(self)

    def workers(self) -> int:
        """DataLoader workers: the configured number, or one less than the CPUs (at most 4)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, (os.cpu_count() or 1) - 1))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
