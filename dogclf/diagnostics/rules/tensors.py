"""Rules on the tensors of the module that trains.

``VanishingGradient``, ``ExplodingTensor``, ``WeightUpdateRatio`` and ``PoorWeightInitialization``.

"The module that trains" is ``state.forward_module``: the head when training on backbone features, the whole
network when images go through the backbone; its trainable parameters are the ones looked at. Gradients are read
in ``on_after_backward`` (before the optimizer step), weights in ``on_batch_end`` (after it). Looking at every
tensor costs a pass over the trainable parameters, so these rules look on the first step, every ``interval`` steps
and on each epoch's last step (SageMaker's analogue is the collection's ``save_interval``, 500 by default there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from dogclf.diagnostics.rules.base import Rule, check_positive
from dogclf.training.callbacks import TrainState

__all__ = ["ExplodingTensor", "PoorWeightInitialization", "VanishingGradient", "WeightUpdateRatio"]

_COLLECTIONS = ("losses", "gradients", "weights")


def trained_parameters(state: TrainState) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of the trainable parameters of the module that trains."""
    module = state.forward_module if state.forward_module is not None else state.model
    prefix = next((f"{n}." for n, m in state.model.named_modules() if m is module and n), "")
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            yield prefix + name, parameter


def _names(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(kw_only=True)
class _TensorRule(Rule):
    """A rule that looks at tensors on the first step, every ``interval`` steps and each epoch's last step."""

    interval: int = 10
    _batch: int = field(default=0, init=False, repr=False)
    _due: bool = field(default=False, init=False, repr=False)

    def on_epoch_start(self, state: TrainState) -> None:
        """Counts batches within the epoch."""
        self._batch = 0

    def on_batch_start(self, state: TrainState) -> None:
        """Decides whether this step is one the rule looks at (see :attr:`due`)."""
        self._batch += 1
        taken = state.step + 1  # the step this batch takes, counted from 1
        self._due = taken == 1 or taken % self.interval == 0 or self._batch >= state.num_batches

    @property
    def due(self) -> bool:
        """Whether the current step is the first, a multiple of ``interval`` or the epoch's last."""
        return self._due


@dataclass(kw_only=True)
class VanishingGradient(_TensorRule):
    """Detects gradients that become extremely small or drop to zero.

    A gradient counts as vanished when the mean of its absolute values is below ``threshold``. Only the weights of
    layers (tensors of two or more dimensions) are looked at: a bias before a BatchNorm, and the BatchNorm's own
    parameters, can have near-zero gradients by construction.

    Attributes:
        threshold: The mean absolute gradient at which a gradient counts as vanished (default 0.0000001).
        interval: Steps between looks (dogclf's; see the module docstring).
    """

    name = "VanishingGradient"
    anchor = "vanishing-gradient"
    summary = "gradients are vanishing (mean absolute value near zero)"

    threshold: float = 0.0000001

    def __post_init__(self) -> None:
        check_positive(self.name, threshold=self.threshold, interval=self.interval)

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """Reads the mean absolute value of every gradient (one device sync)."""
        if not self.due:
            return
        named = [(n, p.grad) for n, p in trained_parameters(state) if p.grad is not None and p.dim() >= 2]
        if not named:
            return
        means = torch.stack([g.detach().abs().float().mean() for _, g in named]).tolist()
        small = [(n, m) for (n, _), m in zip(named, means, strict=True) if m < self.threshold]
        if small:
            listed = _names([f"{n} {m:.2e}" for n, m in small])
            self.fire(
                state,
                f"mean |gradient| below threshold {self.threshold:g} in {len(small)} of {len(named)} tensors: "
                f"{listed}; check the inputs (constant or zero features?) and the head's initialisation",
            )


@dataclass(kw_only=True)
class ExplodingTensor(_TensorRule):
    """Detects non-finite values (NaN or infinity) in the loss, the gradients or the weights.

    The outputs (logits) and the loss are checked at every step; gradients and weights when due. A non-finite loss
    also stops training (the loop's guard, :class:`~dogclf.errors.TrainingDivergedError`, right after the forward
    pass); this rule says where the non-finite values were, in ``rules.json`` and its log line, before that.

    Attributes:
        collection_names: Which of ``losses``, ``gradients``, ``weights`` to check; ``None`` for all (default).
        tensor_regex: Regexes restricting the check to matching names (``loss``, ``gradient/head.0.weight``,
            ``head.0.weight``); ``None`` for all (default).
        only_nan: Look for NaN only, not infinity (default False).
        interval: Steps between looks at gradients and weights (dogclf's; see the module docstring).
    """

    name = "ExplodingTensor"
    anchor = "exploding-tensor"
    summary = "NaN or infinite values in the loss, gradients or weights"

    collection_names: list[str] | str | None = None
    tensor_regex: list[str] | str | None = None
    only_nan: bool = False
    _patterns: list[re.Pattern[str]] = field(default_factory=list, init=False, repr=False)
    _collections: tuple[str, ...] = field(default=_COLLECTIONS, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, interval=self.interval)
        chosen = _split(self.collection_names) or list(_COLLECTIONS)
        unknown = sorted(set(chosen) - set(_COLLECTIONS))
        if unknown:
            raise ValueError(f"{self.name} collection_names: unknown {unknown}; use some of {', '.join(_COLLECTIONS)}")
        self._collections = tuple(chosen)
        self._patterns = [re.compile(p) for p in _split(self.tensor_regex)]

    def _wanted(self, name: str) -> bool:
        return not self._patterns or any(p.fullmatch(name) for p in self._patterns)

    def _bad(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.isnan(tensor).any() if self.only_nan else ~torch.isfinite(tensor).all()

    def _scan(self, named: list[tuple[str, torch.Tensor]]) -> list[str]:
        named = [(n, t) for n, t in named if self._wanted(n)]
        if not named:
            return []
        flags = torch.stack([self._bad(t.detach()) for _, t in named]).tolist()
        return [n for (n, _), bad in zip(named, flags, strict=True) if bad]

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Checks the outputs at every step, before the loop's own guard stops on a non-finite loss."""
        if "losses" in self._collections and self._wanted("logits") and bool(self._bad(logits.detach())):
            self._report_bad(state, ["logits"], "outputs")

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """Checks the gradients when due."""
        if "gradients" in self._collections and self.due:
            named = [(f"gradient/{n}", p.grad) for n, p in trained_parameters(state) if p.grad is not None]
            self._report_bad(state, self._scan(named), "gradients")

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Checks the loss at every step and the weights (after the optimizer step) when due."""
        bad = []
        non_finite = math.isnan(loss) or (not self.only_nan and math.isinf(loss))
        if non_finite and "losses" in self._collections and self._wanted("loss"):
            bad.append(f"loss ({loss})")
        if "weights" in self._collections and self.due:
            bad += self._scan(list(trained_parameters(state)))
        self._report_bad(state, bad, "loss/weights")

    def _report_bad(self, state: TrainState, bad: list[str], where: str) -> None:
        if bad:
            kind = "NaN" if self.only_nan else "non-finite (NaN/inf)"
            self.fire(
                state,
                f"{kind} values in {len(bad)} tensor(s): {_names(bad)}; lower --lr, check the inputs for NaN, "
                "and resume from the last good checkpoint",
            )


def _split(value: list[str] | str | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


@dataclass(kw_only=True)
class WeightUpdateRatio(_TensorRule):
    """Detects optimizer steps that change the weights far too much or far too little.

    It fires when ``||update|| / ||weight||`` is above ``large_threshold`` or below ``small_threshold``.

    On a due step the weights (parameters named ``*weight``) are copied before the optimizer step and compared
    ``num_steps`` steps later (the next step when ``None``).

    Attributes:
        num_steps: Steps across which the ratio is taken; ``None`` for one step (default).
        large_threshold: The largest allowed ratio (default 10.0).
        small_threshold: The smallest allowed ratio (default 0.00000001).
        epsilon: Added to the weight's norm so a zero weight does not divide by zero (default 0.000000001).
        interval: Steps between looks (dogclf's; see the module docstring).
    """

    name = "WeightUpdateRatio"
    anchor = "weight-update-ratio"
    summary = "optimizer steps change the weights far too much or far too little"
    cheap = False  # copies the trainable weights when due

    num_steps: int | None = None
    large_threshold: float = 10.0
    small_threshold: float = 0.00000001
    epsilon: float = 0.000000001
    _before: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _taken_at: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, num_steps=self.num_steps, large_threshold=self.large_threshold)
        check_positive(self.name, small_threshold=self.small_threshold, epsilon=self.epsilon, interval=self.interval)

    def on_train_start(self, state: TrainState) -> None:
        """Drops copies from an earlier run."""
        self._before = {}

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """Copies the weights before the optimizer step when due."""
        if not self._before and self.due:
            self._before = {n: p.detach().clone() for n, p in trained_parameters(state) if n.endswith("weight")}
            self._taken_at = state.step

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Compares the weights with the copy once ``num_steps`` steps have passed."""
        if not self._before or state.step - self._taken_at < (self.num_steps or 1):
            return
        current = dict(trained_parameters(state))
        names = [n for n in self._before if n in current]
        ratios = torch.stack(
            [
                torch.linalg.vector_norm((current[n].detach() - self._before[n]).float())
                / (torch.linalg.vector_norm(self._before[n].float()) + self.epsilon)
                for n in names
            ]
        ).tolist()
        steps = state.step - self._taken_at
        self._before = {}
        large = [f"{n} {r:.3g}" for n, r in zip(names, ratios, strict=True) if r > self.large_threshold]
        small = [f"{n} {r:.3g}" for n, r in zip(names, ratios, strict=True) if r < self.small_threshold]
        if large:
            self.fire(
                state,
                f"update/weight ratio over {steps} step(s) above large_threshold {self.large_threshold:g} in "
                f"{_names(large)}; the learning rate is far too high",
            )
        elif small:
            self.fire(
                state,
                f"update/weight ratio over {steps} step(s) below small_threshold {self.small_threshold:g} in "
                f"{_names(small)}; the learning rate is far too low or the gradients are zero",
            )


_ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.ELU)


@dataclass(kw_only=True)
class PoorWeightInitialization(Rule):
    """Detects poorly initialised parameters in the first steps of training.

    Good initialisation (Xavier, Kaiming) keeps the variance of activations near one from layer to layer; too large
    an initialisation saturates them, too small makes gradients vanish. dogclf's newly initialised layers are the
    head's, so the rule reads the inputs of the head's activation functions (``head.<i>.relu_input``) and of the
    loss's softmax (the logits, ``softmax_input``), and checks, as SageMaker's rule does:

    * on the first step, the largest of those variances against the smallest (above ``threshold``: poor). A linear
      head has a single activation input, the logits; its variance is compared with unit variance, the
      initialisers' target, upwards only (a head initialised far too large saturates the softmax; small logits at
      the start are harmless);
    * on the first step, the spread between the 5th and 95th percentiles of each head weight's gradient (below
      ``distribution_range``: poor, the gradients are all alike or zero);
    * over the first ``steps`` steps, whether the loss decreases: the mean of the last ``patience`` of them not below
      the mean of the first ``patience`` is poor.

    Attributes:
        activation_inputs_regex: Which activation inputs to compare. SageMaker's default ``.*relu_input`` names ReLU
            inputs; dogclf adds the softmax's (``.*relu_input|softmax_input``), as a linear head has no ReLU.
        threshold: The largest allowed ratio of the largest to the smallest activation-input variance (default 10.0).
        distribution_range: The smallest allowed 5th-95th percentile spread of a gradient (default 0.001).
        patience: Steps averaged at each end of the first ``steps`` to judge the loss's decrease (default 5).
        steps: How many of the first steps the rule looks at (default 10).
    """

    name = "PoorWeightInitialization"
    anchor = "poor-weight-initialization"
    summary = "the new head's initialisation makes activations or gradients badly scaled"
    cheap = False  # forward hooks and gradient quantiles, for the first steps only

    activation_inputs_regex: str = r".*relu_input|softmax_input"
    threshold: float = 10.0
    distribution_range: float = 0.001
    patience: int = 5
    steps: int = 10
    _variances: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)
    _losses: list[float] = field(default_factory=list, init=False, repr=False)
    _state: TrainState | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, threshold=self.threshold, distribution_range=self.distribution_range)
        check_positive(self.name, patience=self.patience, steps=self.steps)
        self._pattern = re.compile(self.activation_inputs_regex)

    def on_train_start(self, state: TrainState) -> None:
        """Hooks the head's activations and the loss (unless a resumed run is past the first ``steps`` steps)."""
        self.close()
        self._losses, self._variances, self._state = [], {}, state
        if state.step >= self.steps:
            return
        head = getattr(state.model, "head", None)
        if not isinstance(head, torch.nn.Module):
            head = state.forward_module if state.forward_module is not None else state.model
        for name, module in head.named_modules():
            if isinstance(module, _ACTIVATIONS):
                self._hook(
                    module, f"head.{name}.relu_input" if isinstance(module, torch.nn.ReLU) else f"head.{name}_input"
                )
        self._hook(state.loss_fn, "softmax_input")

    def _hook(self, module: torch.nn.Module, name: str) -> None:
        if self._pattern.fullmatch(name):
            self._handles.append(module.register_forward_pre_hook(self._recorder(name)))

    def _recorder(self, name: str) -> Any:
        def record(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
            state = self._state
            if state is not None and state.phase == "train" and state.step == 0 and inputs:
                self._variances[name] = float(inputs[0].detach().float().var())

        return record

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """On the first step: checks the activation-input variances and the gradient spreads."""
        if state.step != 0:
            return
        problems = []
        variances = {n: v for n, v in self._variances.items() if math.isfinite(v) and v > 0}
        if variances:
            # Across layers as SageMaker compares them; a single input (a linear head's logits) against unit variance,
            # upwards only: small logits at the start are harmless, large ones saturate the softmax.
            low = min(variances.values()) if len(variances) > 1 else 1.0
            ratio = max(variances.values()) / low
            if ratio > self.threshold:
                listed = ", ".join(f"{n} {v:.3g}" for n, v in variances.items())
                against = "" if len(variances) > 1 else " against unit variance"
                problems.append(
                    f"activation-input variances differ {ratio:.3g}x{against} (threshold {self.threshold:g}): {listed}"
                )
        narrow = []
        for name, parameter in trained_parameters(state):
            if name.startswith("head.") and name.endswith("weight") and parameter.grad is not None:
                grad = parameter.grad.detach().float().flatten()[: 1 << 24]
                low, high = torch.quantile(grad, torch.tensor([0.05, 0.95], device=grad.device)).tolist()
                if high - low < self.distribution_range:
                    narrow.append(f"{name} {high - low:.2e}")
        if narrow:
            problems.append(
                f"5th-95th percentile spread of gradients below distribution_range {self.distribution_range:g}: "
                + _names(narrow)
            )
        if problems:
            self.fire(
                state, "; ".join(problems) + self._loss_note(state, float(loss.detach())) + "; re-initialise the head"
            )

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Judges the loss's decrease over the first ``steps`` steps, then drops the hooks."""
        if state.step <= self.steps and math.isfinite(loss):
            self._losses.append(loss)
        if state.step == 1:
            self._remove_hooks()  # the variances are only read on the first step
        if state.step != self.steps:
            return
        n = min(self.patience, len(self._losses) // 2)
        if n:
            first, last = sum(self._losses[:n]) / n, sum(self._losses[-n:]) / n
            if last >= first:
                self.fire(
                    state,
                    f"the loss did not decrease over the first {len(self._losses)} steps (mean of the first {n} "
                    f"{first:.4f}, of the last {n} {last:.4f}; patience {self.patience})"
                    + self._loss_note(state, self._losses[0]),
                )
        self._losses = []

    def _loss_note(self, state: TrainState, first_loss: float) -> str:
        classes = next((m.out_features for m in reversed(list(state.model.modules())) if hasattr(m, "out_features")), 0)
        if classes < 2 or not math.isfinite(first_loss):
            return ""
        return f"; first loss {first_loss:.4g} vs ln({classes}) = {math.log(classes):.3g} for a uniform guess"

    def on_train_end(self, state: TrainState) -> None:
        """Drops the hooks."""
        self.close()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def close(self) -> None:
        """Removes the forward hooks."""
        self._remove_hooks()
