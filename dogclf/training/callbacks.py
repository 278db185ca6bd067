"""Training callbacks: the hook points of the loop, and the built-in progress reporting.

Later integrations (SageMaker Debugger hooks, rules, profilers) attach here
without editing the loop.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from dogclf._logging import FIXED_FORMAT
from dogclf.training.log_line import format_epoch_line

if TYPE_CHECKING:
    import torch

    from dogclf.training.config import TrainConfig

__all__ = ["Callback", "CallbackList", "EpochLogLine", "ProgressBars", "TrainState", "format_epoch_line"]

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What callbacks see of a running training.

    Attributes:
        model: The model being trained.
        optimizer: Its optimizer.
        loss_fn: The loss.
        config: The training configuration.
        epoch: The current epoch (1-based); 0 before the first.
        step: Optimizer steps taken so far.
        num_batches: Batches per training epoch.
        num_eval_batches: Batches per validation pass.
        history: One metrics dict per finished epoch.
        phase: ``"train"`` or ``"eval"``.
        stop: Set to true to stop after the current epoch.
        forward_module: The module that maps a batch's inputs to logits: ``model.head`` when training on
            backbone features, the whole ``model`` when images go through the backbone.
        solver: ``"loop"`` (epochs of mini-batch steps) or ``"lbfgs"`` (one full-batch fit of a linear head whose
            penalty was chosen by cross-validation: one history entry, no training curve).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    config: TrainConfig
    epoch: int = 0
    step: int = 0
    num_batches: int = 0
    num_eval_batches: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    phase: str = "train"
    stop: bool = False
    forward_module: torch.nn.Module | None = None
    solver: str = "loop"


class Callback:
    """Base class: override the hooks you need. All hooks default to doing nothing."""

    def on_train_start(self, state: TrainState) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before an epoch's training batches; ``state.epoch`` is the new epoch."""

    def on_batch_start(self, state: TrainState) -> None:
        """When a training batch has arrived from the loader, before it is moved to the device."""

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """After the forward pass and loss of a training batch, before ``backward()``."""

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """After ``loss.backward()``, before the optimizer step (gradients are set)."""

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """After the optimizer step of a training batch."""

    def on_eval_start(self, state: TrainState) -> None:
        """Before the validation pass of an epoch."""

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """After each validation batch."""

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """After validation and the checkpoint of an epoch."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (not called when training is interrupted)."""


class CallbackList(Callback):
    """Calls each callback in turn."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, name: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            for callback in self.callbacks:
                getattr(callback, name)(*args, **kwargs)

        return call

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return object.__getattribute__(self, "_each")(name)
        return object.__getattribute__(self, name)


class EpochLogLine(Callback):
    """Logs the fixed log line after every epoch (``dogclf.training.callbacks``, INFO), or prints it to ``stream``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Logs the line, or prints it to ``stream`` and flushes."""
        if self.stream is None:
            logger.info(format_epoch_line(metrics), extra=FIXED_FORMAT)
        else:
            print(format_epoch_line(metrics), file=self.stream, flush=True)


class ProgressBars(Callback):
    """tqdm progress bars over training and validation batches (for terminals)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._bar: Any = None

    def _open(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self._close()
        self._bar = tqdm(total=total, desc=desc, unit="batch", leave=False, file=self.stream or sys.stderr)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_start(self, state: TrainState) -> None:
        """Opens the training bar."""
        self._open(state.num_batches, f"epoch {state.epoch}/{state.config.epochs} train")

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Advances the bar and shows the loss."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_eval_start(self, state: TrainState) -> None:
        """Opens the validation bar."""
        self._open(state.num_eval_batches, f"epoch {state.epoch}/{state.config.epochs} valid")

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Advances the validation bar."""
        if self._bar is not None:
            self._bar.update(1)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Closes the bar."""
        self._close()

    def on_train_end(self, state: TrainState) -> None:
        """Closes any open bar."""
        self._close()
