"""Rules on the loss curves: ``LossNotDecreasing``, ``Overfit``, ``Overtraining``.

They read the per-step training loss (``on_batch_end``) and the per-epoch means (``on_epoch_end``: ``train_loss`` is
the mean over the epoch's steps, ``valid_loss`` over the validation split). Validation runs once per epoch, so where
SageMaker's rule counts saved EVAL steps, these count epochs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from dogclf.diagnostics.rules.base import Rule, check_positive, is_finite
from dogclf.training.callbacks import TrainState

__all__ = ["LossNotDecreasing", "Overfit", "Overtraining"]


def _gap(valid: float, train: float) -> float:
    """``(valid - train) / train``; infinite when the training set is memorised (zero loss) and valid is not."""
    if train > 0:
        return (valid - train) / train
    return math.inf if valid > 0 else 0.0


def _times(value: float, reference: float) -> str:
    """``value`` as a multiple of ``reference`` ("78x"), or "far above" when the reference is about zero."""
    return f"{value / reference:.3g}x" if reference > 1e-12 else "far above (from about zero)"


_MODES = (None, "GLOBAL", "TRAIN", "EVAL")


@dataclass(kw_only=True)
class LossNotDecreasing(Rule):
    """Detects a loss that is not decreasing at an adequate rate (or is rising).

    It compares the mean training loss of consecutive windows of steps: of consecutive epochs (``train_loss``) when
    an epoch has at least ``num_steps`` steps, else of consecutive ``num_steps`` steps, evaluated every ``num_steps``
    steps. It fires when the loss fell by less than ``diff_percent`` percent, or rose by more than
    ``increase_threshold_percent`` percent. SageMaker compares single saved losses (500 steps apart with its default
    save interval); single mini-batch losses are noisy, so dogclf compares means over whole epochs where it can, in
    which every image counts once. With ``mode="EVAL"`` it compares each epoch's validation loss with the previous
    epoch's instead.

    Attributes:
        num_steps: Steps between evaluations (SageMaker default 10).
        diff_percent: The least decrease, in percent, the loss must make between windows (default 0.1).
        increase_threshold_percent: The most the loss may rise, in percent, before the rule fires (default 5).
        mode: ``None``/``"GLOBAL"``/``"TRAIN"``: training losses; ``"EVAL"``: validation losses. SageMaker's
            default ``GLOBAL`` numbers steps across modes; dogclf's global steps are its training steps.
    """

    name = "LossNotDecreasing"
    anchor = "loss-not-decreasing"
    summary = "the loss is not decreasing at an adequate rate, or is rising"

    num_steps: int = 10
    diff_percent: float = 0.1
    increase_threshold_percent: float = 5.0
    mode: str | None = None
    _recent: deque[float] = field(default_factory=deque, init=False, repr=False)
    _previous: float | None = field(default=None, init=False, repr=False)
    _by_epoch: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, num_steps=self.num_steps, diff_percent=self.diff_percent)
        check_positive(self.name, increase_threshold_percent=self.increase_threshold_percent)
        if self.mode not in _MODES:
            raise ValueError(f"{self.name} mode must be one of GLOBAL, TRAIN, EVAL (or None), got {self.mode!r}")

    def on_train_start(self, state: TrainState) -> None:
        """Forgets earlier runs' losses."""
        self._recent = deque(maxlen=2 * self.num_steps)
        self._by_epoch = state.num_batches >= self.num_steps
        self._previous = None

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Every ``num_steps`` steps, compares the last two windows of training losses (see the class docstring)."""
        if self.mode == "EVAL" or self._by_epoch:
            return
        self._recent.append(loss)
        n = self.num_steps
        if len(self._recent) == 2 * n and state.step % n == 0:
            values = list(self._recent)
            before, now = sum(values[:n]) / n, sum(values[n:]) / n
            what = f"mean training loss of steps {state.step - n + 1}-{state.step} vs the {n} steps before"
            self._compare(state, before, now, what)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Compares this epoch's mean loss (validation with ``mode="EVAL"``) with the last epoch's."""
        key = "valid_loss" if self.mode == "EVAL" else "train_loss"
        if (self.mode != "EVAL" and not self._by_epoch) or not is_finite(metrics.get(key)):
            return
        now = float(metrics[key])
        if self._previous is not None:
            self._compare(state, self._previous, now, f"{key} of epoch {state.epoch} vs the epoch before")
        self._previous = now

    def _compare(self, state: TrainState, before: float, now: float, what: str) -> None:
        if not (is_finite(before) and is_finite(now)):
            return  # a non-finite loss is ExplodingTensor's finding
        scale = max(abs(before), 1e-12)
        if now > before:
            rise = 100 * (now - before) / scale
            if rise > self.increase_threshold_percent:
                amount = f"{rise:.1f}%" if rise < 1000 else f"{_times(now, before)}"
                self.fire(
                    state,
                    f"{what}: rose {amount} ({before:.4f} -> {now:.4f}), more than increase_threshold_percent "
                    f"{self.increase_threshold_percent:g}; the learning rate may be too high",
                )
            return
        fall = 100 * (before - now) / scale
        if fall < self.diff_percent:
            self.fire(
                state,
                f"{what}: fell only {fall:.3f}% ({before:.4f} -> {now:.4f}), less than diff_percent "
                f"{self.diff_percent:g}; training has stalled or converged",
            )


@dataclass(kw_only=True)
class Overfit(Rule):
    """Detects a model being overfit to the training data, by comparing the validation and training losses.

    At the end of each epoch from step ``start_step`` on, ``(valid_loss - train_loss) / train_loss`` is compared
    with ``ratio_threshold``; when it is above for ``patience`` epochs in a row, the rule fires. A head fitted by
    L-BFGS (``state.solver == "lbfgs"``) is not judged: its penalty was chosen by cross-validation for the loss on
    held-out photos, and a converged linear probe's training loss is always well under its validation loss (0.04
    vs 0.16 on Imagewoof), so the rule would fire on every such fit.

    Attributes:
        start_step: The step from which to start comparing (default 0).
        patience: Epochs the ratio may exceed the threshold before the model counts as overfit (default 1).
        ratio_threshold: The largest allowed ``(mean valid loss - mean train loss) / mean train loss`` (default 0.1).
    """

    name = "Overfit"
    anchor = "overfit"
    summary = "the validation loss is well above the training loss"

    start_step: int = 0
    patience: int = 1
    ratio_threshold: float = 0.1
    _exceeded: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, patience=self.patience, ratio_threshold=self.ratio_threshold)
        if self.start_step < 0:
            raise ValueError(f"{self.name} start_step must be >= 0, got {self.start_step!r}")

    def on_train_start(self, state: TrainState) -> None:
        """Resets the patience count."""
        self._exceeded = 0

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Compares the epoch's mean losses."""
        train, valid = metrics.get("train_loss"), metrics.get("valid_loss")
        if state.solver == "lbfgs" or state.step < self.start_step or not (is_finite(train) and is_finite(valid)):
            return
        ratio = _gap(valid, train)
        self._exceeded = self._exceeded + 1 if ratio > self.ratio_threshold else 0
        if self._exceeded >= self.patience:
            above = f"{ratio:.0%} above" if ratio < 10 else f"{_times(valid, train)} the"
            self.fire(
                state,
                f"valid_loss {valid:.4f} is {above} train_loss {train:.4f} "
                f"(ratio_threshold {self.ratio_threshold:g}) for {self._exceeded} epoch(s); "
                "regularize (--dropout, --weight-decay, --augment), get more data, or train fewer epochs",
            )


@dataclass(kw_only=True)
class Overtraining(Rule):
    """Detects a model trained past the point where it improves.

    A loss counts as improving when it falls more than ``delta`` below its best so far. The rule fires when the
    training loss has not improved for ``patience_train`` epochs, or the validation loss for ``patience_validation``
    epochs (SageMaker counts saved steps; validation runs once per epoch here).

    Attributes:
        patience_train: Epochs without a new best training loss before it counts as no longer improving (default 5).
        patience_validation: The same for the validation loss (default 10).
        delta: How much lower a loss must be than the best so far to be a new best (default 0.01).
    """

    name = "Overtraining"
    anchor = "overtraining"
    summary = "the training or validation loss has stopped improving"

    patience_train: int = 5
    patience_validation: int = 10
    delta: float = 0.01
    _best: dict[str, tuple[float, int]] = field(default_factory=dict, init=False, repr=False)
    _since: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, patience_train=self.patience_train, patience_validation=self.patience_validation)
        if self.delta < 0:
            raise ValueError(f"{self.name} delta must be >= 0, got {self.delta!r}")

    def on_train_start(self, state: TrainState) -> None:
        """Forgets the best losses of earlier runs."""
        self._best, self._since = {}, {}

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Updates the best losses and fires when one has been flat for its patience."""
        stale = []
        for key, patience, label in (
            ("train_loss", self.patience_train, "training"),
            ("valid_loss", self.patience_validation, "validation"),
        ):
            value = metrics.get(key)
            if not is_finite(value):
                continue
            best = self._best.get(key)
            if best is None or value < best[0] - self.delta:
                self._best[key], self._since[key] = (value, state.epoch), 0
                continue
            self._since[key] += 1
            if self._since[key] >= patience:
                stale.append(
                    f"{label} loss has not improved by delta {self.delta:g} for {self._since[key]} epochs "
                    f"(best {best[0]:.4f} at epoch {best[1]}, now {value:.4f})"
                )
        if stale:
            self.fire(state, "; ".join(stale) + "; stop earlier (fewer --epochs) or keep the best epoch")
