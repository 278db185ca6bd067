"""Training hyperparameters and device selection."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TrainConfig", "resolve_device"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of a training run. Defaults follow the seeds: Adam, frozen backbone.

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
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return asdict(self)

    def workers(self) -> int:
        """DataLoader workers: the configured number, or one less than the CPUs (at most 4)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, (os.cpu_count() or 1) - 1))


def resolve_device(name: str = "auto") -> Any:
    """Turns ``"auto"``/``"cpu"``/``"cuda[:N]"`` into a ``torch.device``.

    Raises:
        ValueError: If CUDA is asked for and not available, or the name is unknown.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} was asked for, but this torch has no usable CUDA device; use --device cpu or auto."
            )
        index = name.partition(":")[2]
        count = torch.cuda.device_count()
        if index and not (index.isdigit() and int(index) < count):
            raise ValueError(f"--device {name}: no such CUDA device; this machine has cuda:0 to cuda:{count - 1}.")
        return torch.device(name)
    raise ValueError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
