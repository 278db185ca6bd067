"""``ClassImbalance``: the training labels and the predictions made on them, per class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dogclf.diagnostics.rules.base import Rule, check_positive
from dogclf.training.callbacks import TrainState

__all__ = ["ClassImbalance"]


@dataclass(kw_only=True)
class ClassImbalance(Rule):
    """Detects imbalanced classes, and classes mispredicted because of it.

    Two checks, as SageMaker's rule makes them. The labels of the training batches are counted; once ``samples``
    labels have been seen (or the first epoch ends, if the training split is smaller), the rule fires if the
    largest class has more than ``threshold_imbalance`` times the images of the smallest. And from the second
    epoch on, it fires if more than ``threshold_misprediction`` of the training images of an underrepresented class
    (one with at most half the images of the largest) were mispredicted during the epoch.

    Attributes:
        threshold_imbalance: The largest allowed ratio of the largest to the smallest class (default 10).
        threshold_misprediction: The largest allowed fraction of a class's images mispredicted (default 0.7).
        samples: Labels to count before the imbalance is judged (default 500; a whole epoch is always enough).
        argmax: Whether the predictions are per-class scores to take the argmax of (dogclf's are logits, so True;
            SageMaker's default False is for predictions saved as class indices).
        class_names: Display names by class index (set by ``train()``), for the details.
    """

    name = "ClassImbalance"
    anchor = "class-imbalance"
    summary = "some classes have far more training images than others, or are mostly mispredicted"

    threshold_imbalance: float = 10.0
    threshold_misprediction: float = 0.7
    samples: int = 500
    argmax: bool = True
    class_names: Sequence[str] = ()
    _epoch_counts: torch.Tensor | None = field(default=None, init=False, repr=False)
    _epoch_wrong: torch.Tensor | None = field(default=None, init=False, repr=False)
    _judged: bool = field(default=False, init=False, repr=False)
    _seen: int = field(default=0, init=False, repr=False)
    _epochs: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, threshold_imbalance=self.threshold_imbalance, samples=self.samples)
        if not 0 < self.threshold_misprediction <= 1:
            raise ValueError(
                f"{self.name} threshold_misprediction must be in (0, 1], got {self.threshold_misprediction!r}"
            )

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The rule's parameters (``class_names`` is data, not a parameter)."""
        return [n for n in super().parameter_names() if n != "class_names"]

    def on_train_start(self, state: TrainState) -> None:
        """Starts counting afresh."""
        self._judged, self._seen, self._epochs = False, 0, 0

    def on_epoch_start(self, state: TrainState) -> None:
        """Starts the epoch's per-class counts."""
        self._epoch_counts = self._epoch_wrong = None

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Counts the batch's labels and its mispredictions per class (on the device: no sync per batch)."""
        classes = logits.shape[-1] if self.argmax else int(labels.max()) + 1
        predicted = logits.detach().argmax(-1) if self.argmax else logits.detach().long()
        counts = torch.bincount(labels, minlength=classes)
        wrong = torch.bincount(labels[predicted != labels], minlength=classes)
        self._epoch_counts = counts if self._epoch_counts is None else self._epoch_counts + counts
        self._epoch_wrong = wrong if self._epoch_wrong is None else self._epoch_wrong + wrong
        self._seen += len(labels)
        if not self._judged and self._seen >= self.samples:
            self._judged = True
            self._judge_imbalance(state, self._epoch_counts.cpu())

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Judges the imbalance once enough labels were seen, and the mispredictions from the second epoch on."""
        if self._epoch_counts is None or self._epoch_wrong is None:
            return
        self._epochs += 1
        counts = self._epoch_counts.cpu()
        if not self._judged:  # fewer than `samples` training images: one whole epoch is all there is
            self._judged = True
            self._judge_imbalance(state, counts)
        if self._epochs >= 2:
            self._judge_mispredictions(state, counts, self._epoch_wrong.cpu())

    def _label(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else f"class {index}"

    def _judge_imbalance(self, state: TrainState, counts: torch.Tensor) -> None:
        seen = [(int(n), i) for i, n in enumerate(counts.tolist()) if n > 0]
        if len(seen) < 2:
            return
        (low, small), (high, large) = min(seen), max(seen)
        ratio = high / low
        if ratio > self.threshold_imbalance:
            self.fire(
                state,
                f"{self._label(large)!r} has {ratio:.1f}x the training images of {self._label(small)!r} "
                f"({high} vs {low}; threshold_imbalance {self.threshold_imbalance:g}); balance the classes "
                "(more images of the small ones, or class weights / a balanced sampler)",
            )

    def _judge_mispredictions(self, state: TrainState, counts: torch.Tensor, wrong: torch.Tensor) -> None:
        largest = int(counts.max())
        rates = [  # underrepresented classes: at most half the images of the largest
            (w / n, i, n)
            for i, (n, w) in enumerate(zip(counts.tolist(), wrong.tolist(), strict=True))
            if 0 < n <= largest / 2
        ]
        bad = sorted((r for r in rates if r[0] > self.threshold_misprediction), reverse=True)
        if bad:
            listed = ", ".join(f"{self._label(i)!r} {rate:.0%} of {n}" for rate, i, n in bad[:4])
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            self.fire(
                state,
                f"mispredicted training images of underrepresented classes above threshold_misprediction "
                f"{self.threshold_misprediction:g} in epoch {state.epoch}: {listed}{more}",
            )
