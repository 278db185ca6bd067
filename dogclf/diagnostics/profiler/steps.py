"""Where each training step's time goes, from the loop's hooks; and each epoch's validation and checkpoint time.

A step runs from the end of the previous one (or the epoch's start) to ``on_batch_end``:

* data wait: until the loader hands over the batch (``on_batch_start``);
* forward: moving it to the device, the forward pass and the loss (``on_forward``);
* backward: ``zero_grad`` and ``backward()`` (``on_after_backward``);
* optimizer: the optimizer step and the step's metrics (``on_batch_end``);
* callbacks: what the diagnostics' own callbacks (the rules, TensorBoard, smdebug) did at those hooks.

The timer is two callbacks, :class:`StepTimer` placed before the other diagnostics callbacks and its
:attr:`StepTimer.tail` placed after them, so their cost is measured rather than mixed into the step's parts. On
CUDA each boundary synchronises the device, or the times would only say when work was queued; that costs a little
throughput, which is the price of profiling.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from dogclf.training.callbacks import Callback, TrainState

__all__ = ["COMPONENTS", "StepTimer", "StepTiming"]

COMPONENTS = ("data", "forward", "backward", "optimizer", "callbacks")
_PARTS = {
    "on_batch_start": "data",
    "on_forward": "forward",
    "on_after_backward": "backward",
    "on_batch_end": "optimizer",
}


@dataclass
class StepTiming:
    """One training step's time in seconds, by component, and when it ended (seconds since the timer started)."""

    step: int
    epoch: int
    data: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0
    callbacks: float = 0.0
    end: float = 0.0

    @property
    def total(self) -> float:
        """The whole step."""
        return self.data + self.forward + self.backward + self.optimizer + self.callbacks


class _Tail(Callback):
    """The timer's second half: marks the end of the other callbacks' work at each hook."""

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_epoch_start(self, state: TrainState) -> None:
        self.timer._close_hook(state, "on_epoch_start")

    def on_batch_start(self, state: TrainState) -> None:
        self.timer._close_hook(state, "on_batch_start")

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.timer._close_hook(state, "on_forward")

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        self.timer._close_hook(state, "on_after_backward")

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        self.timer._close_hook(state, "on_batch_end")

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        self.timer._eval_end = self.timer._now()


@dataclass
class StepTimer(Callback):
    """Records :class:`StepTiming` for every training step, and validation and checkpoint spans per epoch.

    Attributes:
        started: ``time.perf_counter()`` that times are relative to.
        steps: The steps, in order.
        validation: ``(start, end)`` of each epoch's validation pass.
        checkpointing: ``(start, end)`` from each validation's end to the epoch's end (checkpoint write, callbacks).
        head_only: Whether the loop trained the head alone (on features).
        device: The training device.
        overhead: Seconds the torch.profiler window itself spent (starting, exporting its trace), left out of the
            steps.
    """

    started: float = field(default_factory=time.perf_counter)
    steps: list[StepTiming] = field(default_factory=list)
    validation: list[tuple[float, float]] = field(default_factory=list)
    checkpointing: list[tuple[float, float]] = field(default_factory=list)
    head_only: bool = False
    device: str = "cpu"
    overhead: float = 0.0
    _cuda: bool = field(default=False, repr=False)
    _current: StepTiming | None = field(default=None, repr=False)
    _last: float = field(default=0.0, repr=False)
    _hook_start: float = field(default=0.0, repr=False)
    _eval_start: float | None = field(default=None, repr=False)
    _eval_end: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.tail: Callback = _Tail(self)

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leaves ``seconds`` of work done inside the current hook (the profiler's own) out of the step."""
        self.overhead += seconds
        self._hook_start += seconds

    def on_train_start(self, state: TrainState) -> None:
        """Notes the device and whether the head trains alone."""
        parameter = next(state.model.parameters(), None)
        self.device = str(parameter.device) if parameter is not None else "cpu"
        self._cuda = self.device.startswith("cuda")
        head = getattr(state.model, "head", None)
        self.head_only = head is not None and state.forward_module is head

    def _open_hook(self, state: TrainState, hook: str) -> None:
        now = self._now()
        if hook == "on_batch_start":
            self._current = StepTiming(step=state.step + 1, epoch=state.epoch)
        if self._current is not None and hook in _PARTS:
            part = _PARTS[hook]
            setattr(self._current, part, getattr(self._current, part) + now - self._last)
        self._hook_start = now

    def _close_hook(self, state: TrainState, hook: str) -> None:
        now = self._now()
        if self._current is not None and hook != "on_epoch_start":
            self._current.callbacks += max(0.0, now - self._hook_start)
        if hook == "on_batch_end" and self._current is not None:
            self._current.end = now - self.started
            self.steps.append(self._current)
            self._current = None
        self._last = now

    def on_epoch_start(self, state: TrainState) -> None:
        """The epoch's first data wait starts after the other callbacks' epoch start."""
        self._open_hook(state, "on_epoch_start")

    def on_batch_start(self, state: TrainState) -> None:
        """Data wait ends."""
        self._open_hook(state, "on_batch_start")

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward ends."""
        self._open_hook(state, "on_forward")

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """Backward ends."""
        self._open_hook(state, "on_after_backward")

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Optimizer ends."""
        self._open_hook(state, "on_batch_end")

    def on_eval_start(self, state: TrainState) -> None:
        """Validation starts."""
        self._eval_start = self._eval_end = self._now()

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Closes the epoch's validation and checkpoint spans."""
        end = self._now() - self.started
        if self._eval_start is not None and self._eval_end is not None:
            stop = self._eval_end - self.started
            self.validation.append((self._eval_start - self.started, stop))
        elif self._last:  # no validation split: the checkpoint follows the last step
            stop = self._last - self.started
        else:  # no steps at all (an L-BFGS fit): nothing of the epoch's end to time
            return
        self.checkpointing.append((stop, end))
        self._eval_start = self._eval_end = None
