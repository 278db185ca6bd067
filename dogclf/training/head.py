"""Training the head on backbone features held in memory, through the same :class:`~dogclf.training.loop.Trainer`.

With a frozen backbone and no random augmentation, an image's features are the same every epoch, so the backbone
runs once (:mod:`dogclf.features.pipeline`) and each epoch is a pass of the head over an in-memory matrix. The
Trainer, optimizer, loss, epoch order (:class:`~dogclf.data.dataset.EpochShuffleSampler`), metrics, callbacks and
checkpoints are the image path's, so a run gives the same history either way and a checkpoint resumes on either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dogclf.data.dataset import EpochShuffleSampler
from dogclf.hardware import resolve_device
from dogclf.training.callbacks import Callback, TrainState
from dogclf.training.config import TrainConfig
from dogclf.training.loop import TrainBatches, Trainer

if TYPE_CHECKING:
    from dogclf.features.pipeline import FeatureSet
    from dogclf.model import DogClassifierNet
    from dogclf.training.distributed import ProcessGroup

__all__ = ["FeatureBatches", "fit_head", "head_logits", "make_head_trainer"]


class FeatureBatches:
    """``(features, labels)`` batches sliced from in-memory tensors, in a sampler's order or in index order.

    Yields exactly the batches a ``DataLoader(batch_size=..., sampler=sampler)`` over the same rows would, without
    its per-item overhead.

    Args:
        features: ``(N, F)`` features.
        labels: ``(N,)`` class indices.
        batch_size: Rows per batch (the last batch may be smaller).
        sampler: Epoch order; ``None`` for index order.
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        sampler: EpochShuffleSampler | None = None,
    ) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.labels = labels
        self.batch_size = batch_size
        self.sampler = sampler

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is None:
            for start in range(0, len(self.labels), self.batch_size):
                yield self.features[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            return
        order = torch.tensor([index for index, _seed in self.sampler], dtype=torch.long, device=self.labels.device)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.features[rows], self.labels[rows]


class _OnEpoch(Callback):
    def __init__(self, function: Callable[[dict[str, float]], None]) -> None:
        self.function = function

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        self.function(dict(metrics))


def make_head_trainer(
    model: DogClassifierNet,
    train: FeatureSet,
    valid: FeatureSet | None,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    checkpoint_path: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    group: ProcessGroup | None = None,
) -> Trainer:
    """A :class:`~dogclf.training.loop.Trainer` whose batches are features and whose forward pass is ``model.head``.

    The features are moved to the training device once. Arguments are those of :func:`fit_head`; under torchrun
    (``group``) every rank trains alike on all the features and only rank 0 checkpoints.

    Raises:
        ValueError: If ``train`` is empty or the feature width does not fit the head.
    """
    if len(train.labels) == 0:
        raise ValueError("There are no training features to train the head on.")
    device = resolve_device(config.device)
    sampler = EpochShuffleSampler(len(train.labels), seed=config.seed)
    train_batches = FeatureBatches(
        train.features.to(device), train.labels.to(device), batch_size=config.batch_size, sampler=sampler
    )
    valid_batches = (
        FeatureBatches(valid.features.to(device), valid.labels.to(device), batch_size=config.batch_size)
        if valid is not None and len(valid.labels)
        else None
    )
    hooks = [*callbacks, _OnEpoch(on_epoch)] if on_epoch is not None else list(callbacks)
    return Trainer(
        model,
        config=config,
        checkpoint_path=checkpoint_path,
        callbacks=hooks,
        fingerprint=fingerprint,
        batches=TrainBatches(
            train=train_batches, valid=valid_batches, sampler=sampler, head_only=True, train_labels=train.labels
        ),
        group=group,
    )


def fit_head(
    model: DogClassifierNet,
    train: FeatureSet,
    valid: FeatureSet | None,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    checkpoint_path: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = False,
) -> list[dict[str, float]]:
    """Trains ``model.head`` on backbone features; returns the per-epoch history.

    Same optimizer (:func:`~dogclf.training.loop.make_optimizer`), loss, seeding, epoch order and metrics (``epoch``,
    ``train_loss``, ``train_top1``, ``valid_loss``, ``valid_top1``, ``seconds``) as training on images. Seed the
    global RNG (``torch.manual_seed(config.seed)``) before building the model, as :func:`dogclf.train` does, for
    runs that repeat exactly.

    Args:
        model: The model; only its head is trained (the backbone is not run).
        train: Training features and labels.
        valid: Validation features and labels, or ``None``/empty for no validation (metrics are then NaN).
        config: Hyperparameters (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``seed``, ``device``).
        callbacks: Training callbacks, as for the image path.
        on_epoch: Called with each epoch's metrics after its checkpoint; it may raise to stop training (for example
            an Optuna pruner), which propagates to the caller.
        checkpoint_path: Per-epoch checkpoint (of the whole model, so either path can resume it); ``None`` for none.
        fingerprint: What a checkpoint must match to be resumed.
        resume: Continue from ``checkpoint_path``.

    Returns:
        One metrics dict per finished epoch (with a resumed run, the earlier epochs too).
    """
    trainer = make_head_trainer(
        model,
        train,
        valid,
        config,
        callbacks=callbacks,
        on_epoch=on_epoch,
        checkpoint_path=checkpoint_path,
        fingerprint=fingerprint,
    )
    if resume:
        trainer.resume()
    return trainer.fit()


def head_logits(head: torch.nn.Module, features: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """A head's logits for ``features`` in eval mode (``model.head``), as float32 on the CPU ``(N, num_classes)``."""
    device = next(head.parameters()).device
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            parts = [
                head(features[start : start + batch_size].to(device)).float().cpu()
                for start in range(0, len(features), batch_size)
            ]
    finally:
        head.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, 0)
