"""The training loop: one code path for local runs and SageMaker training containers."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader

from dogclf.backbones.spec import Preprocessing
from dogclf.data.dataset import EpochShuffleSampler, ImageDataset
from dogclf.data.folder import Sample
from dogclf.data.transforms import eval_transform, train_transform
from dogclf.errors import ModelDirError, TrainingDivergedError
from dogclf.hardware import resolve_device
from dogclf.model import DogClassifierNet
from dogclf.training.callbacks import Callback, CallbackList, TrainState
from dogclf.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from dogclf.training.config import TrainConfig
from dogclf.training.schedule import lr_factor, make_loss, make_optimizer, warmup_steps

if TYPE_CHECKING:
    from dogclf.training.distributed import ProcessGroup

__all__ = ["Batches", "TrainBatches", "Trainer", "check_fingerprint", "make_optimizer"]


def check_fingerprint(payload: dict[str, Any], fingerprint: dict[str, Any], path: Path) -> None:
    """Checks that a loaded checkpoint belongs to the run described by ``fingerprint``.

    Raises:
        ModelDirError: Naming every setting that differs.
    """
    saved = payload.get("fingerprint", {})
    different = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if different:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {fingerprint.get(k)!r}" for k in different)
        raise ModelDirError(
            f"The checkpoint {str(path)!r} is from a different run ({details}). Resume with the same data, backbone, "
            "weights, head and hyperparameters (only --epochs may grow), or start a new run in another --out folder."
        )


class Batches(Protocol):
    """An iterable of ``(inputs, labels)`` batches that knows how many it yields (a DataLoader is one)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class TrainBatches:
    """Ready-made batches for a :class:`Trainer`, instead of the image loaders it builds itself.

    Attributes:
        train: ``(inputs, labels)`` batches with ``len()``; each iteration follows ``sampler``'s current order.
        valid: Validation batches in a fixed order, or ``None`` for no validation.
        sampler: The epoch-seeded order of ``train``; the trainer calls ``set_epoch`` before every epoch.
        head_only: The inputs are backbone features, so the trainer runs only ``model.head`` on them.
        train_labels: The training labels (for balanced class weights); ``None`` if not known.
    """

    train: Batches
    valid: Batches | None
    sampler: EpochShuffleSampler
    head_only: bool = False
    train_labels: torch.Tensor | None = None


class Trainer:
    """Trains a :class:`~dogclf.model.DogClassifierNet` and checkpoints every epoch.

    By default it reads images (``train_samples``, ``valid_samples``, ``preprocessing``); given ``batches`` it
    trains on those instead, e.g. cached backbone features through the head alone
    (:mod:`dogclf.training.head`). Either way the optimizer, loss, epoch order, metrics, callbacks and
    checkpoints are the same.

    Args:
        model: The model; its head (and backbone, if unfrozen) is trained.
        train_samples: Training images.
        valid_samples: Validation images (may be empty).
        preprocessing: The backbone's input contract (needed unless ``batches`` is given).
        config: Hyperparameters.
        checkpoint_path: Where to write the per-epoch checkpoint; ``None`` for none.
        callbacks: Hooks called during training.
        fingerprint: What must match for a checkpoint to be resumed (backbone,
            classes, head...); stored in the checkpoint.
        batches: Ready-made batches to train on instead of images.
        group: The torchrun process group this process is part of (:mod:`dogclf.training.distributed`): on images,
            each rank takes its part of every batch under DistributedDataParallel and the epoch metrics are summed
            over ranks; with ready-made batches every rank trains alike. Only rank 0 writes checkpoints.
    """

    def __init__(
        self,
        model: DogClassifierNet,
        *,
        train_samples: Sequence[Sample] = (),
        valid_samples: Sequence[Sample] = (),
        preprocessing: Preprocessing | None = None,
        config: TrainConfig,
        checkpoint_path: Path | None = None,
        callbacks: Sequence[Callback] = (),
        fingerprint: dict[str, Any] | None = None,
        batches: TrainBatches | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.checkpoint_path = checkpoint_path
        self.fingerprint = fingerprint or {}
        self.callbacks = CallbackList(callbacks)
        self.group = group
        if batches is None:
            if preprocessing is None:
                raise ValueError("Trainer needs the backbone's preprocessing to read images (or ready batches).")
            batches = self._image_batches(train_samples, valid_samples, preprocessing, config)
        self.sampler = batches.sampler
        self.train_loader = batches.train
        self.valid_loader = batches.valid
        # What maps a batch's inputs to logits: the whole network for images, the head alone for features.
        self.forward: torch.nn.Module = self.model.head if batches.head_only else self.model
        # The ranks share the work (and so sum their metrics) only when they split the images between them.
        self.sharded = group is not None and not batches.head_only
        if self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        num_classes = _num_classes(model)
        self.loss_fn = make_loss(config, batches.train_labels, num_classes).to(self.device)
        # Validation is always plain cross-entropy (the NLL), comparable across smoothing and class weights; when the
        # training loss is that already, the same module serves both (a debugger hook on it then sees both phases).
        plain = self.loss_fn.weight is None and not self.loss_fn.label_smoothing
        self.eval_loss_fn = self.loss_fn if plain else torch.nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(model, config)
        self._base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        self._total_steps = config.epochs * len(self.train_loader)
        self._warmup = warmup_steps(config, len(self.train_loader))
        self.best = _Best()
        self.stopped_early: int | None = None  # the epoch after which early stopping ended training
        self.state = TrainState(
            model=self.model,
            optimizer=self.optimizer,
            loss_fn=self.loss_fn,
            config=config,
            num_batches=len(self.train_loader),
            num_eval_batches=len(self.valid_loader) if self.valid_loader is not None else 0,
            forward_module=self.forward,
        )

    def _image_batches(
        self,
        train_samples: Sequence[Sample],
        valid_samples: Sequence[Sample],
        preprocessing: Preprocessing,
        config: TrainConfig,
    ) -> TrainBatches:
        workers = config.workers()
        common: dict[str, Any] = {
            "batch_size": config.batch_size,
            "num_workers": workers,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": workers > 0,
        }
        train_set = ImageDataset(
            train_samples,
            train_transform(preprocessing, augment=config.augment),
            min_size=preprocessing.resize_size,
        )
        sampler: Any = EpochShuffleSampler(len(train_set), seed=config.seed)
        # Each loader gets its own generator: DataLoader start-up draws worker seeds from it, and drawing them from
        # the global RNG instead (which head dropout uses) would make a resumed run differ from an uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed)
        if self.group is not None:  # this rank's part of every global batch, and of the valid images
            from dogclf.training.distributed import ShardedEpochSampler

            sampler = ShardedEpochSampler(sampler, config.batch_size, self.group)
            shared = {k: v for k, v in common.items() if k != "batch_size"}
            train_loader = DataLoader(train_set, batch_sampler=sampler, generator=generator, **shared)
            valid_samples = list(valid_samples)[self.group.rank :: self.group.world_size]
        else:
            train_loader = DataLoader(train_set, sampler=sampler, generator=generator, **common)
        valid_set = ImageDataset(valid_samples, eval_transform(preprocessing), min_size=preprocessing.resize_size)
        valid_loader = (
            DataLoader(valid_set, shuffle=False, generator=torch.Generator().manual_seed(config.seed), **common)
            if len(valid_set)
            else None
        )
        labels = torch.tensor([sample.label for sample in train_samples], dtype=torch.long)
        return TrainBatches(train=train_loader, valid=valid_loader, sampler=sampler, train_labels=labels)

    def resume(self) -> int:
        """Loads the checkpoint at ``checkpoint_path``; returns the last finished epoch.

        Raises:
            ModelDirError: If there is no checkpoint, or it belongs to a different run.
        """
        if self.checkpoint_path is None:
            raise ModelDirError("This trainer has no checkpoint path to resume from.")
        payload = load_checkpoint(self.checkpoint_path)
        check_fingerprint(payload, self.fingerprint, self.checkpoint_path)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        restore_rng(payload)
        self.state.epoch = int(payload["epoch"])
        self.state.step = int(payload["step"])
        self.state.history = list(payload["history"])
        self.best = _Best.from_payload(payload.get("best"))
        return self.state.epoch

    def fit(self) -> list[dict[str, float]]:
        """Trains from ``state.epoch + 1`` to ``config.epochs``; returns the per-epoch history."""
        state = self.state
        self.callbacks.on_train_start(state)
        while state.epoch < self.config.epochs and not state.stop:
            state.epoch += 1
            started = time.perf_counter()
            train_loss, train_top1 = self._train_epoch()
            valid_loss, valid_top1 = self._validate()
            metrics = {
                "epoch": float(state.epoch),
                "train_loss": train_loss,
                "train_top1": train_top1,
                "valid_loss": valid_loss,
                "valid_top1": valid_top1,
                "seconds": time.perf_counter() - started,
            }
            state.history.append(metrics)
            self.best.update(state.epoch, valid_loss, self._kept_module())
            if self.checkpoint_path is not None and (self.group is None or self.group.is_main):
                save_checkpoint(
                    self.checkpoint_path,
                    epoch=state.epoch,
                    step=state.step,
                    model=self.model,
                    optimizer=self.optimizer,
                    history=state.history,
                    fingerprint=self.fingerprint,
                    best=self.best.to_payload(),
                )
            self.callbacks.on_epoch_end(state, metrics)
            patience = self.config.patience
            if patience is not None and self.best.epoch and state.epoch - self.best.epoch >= patience:
                self.stopped_early = state.epoch
                state.stop = True
        self.callbacks.on_train_end(state)
        self._restore_kept()
        return state.history

    @property
    def kept_epoch(self) -> int:
        """The epoch whose weights the model holds after :meth:`fit`.

        The best by validation loss with ``keep="best"`` (when there was validation data), else the last.
        """
        if self.config.keep == "best" and self.best.epoch:
            return self.best.epoch
        return self.state.epoch

    def _kept_module(self) -> torch.nn.Module:
        """What keep-best copies: the head alone when the backbone is frozen (it never changes), else everything."""
        return self.model.head if self.model.frozen else self.model

    def _restore_kept(self) -> None:
        if self.kept_epoch != self.state.epoch and self.best.state is not None:
            self._kept_module().load_state_dict(self.best.state)

    def _set_lr(self, step: int) -> None:
        factor = lr_factor(step, total_steps=self._total_steps, warmup=self._warmup, schedule=self.config.lr_schedule)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor

    def _train_epoch(self) -> tuple[float, float]:
        state = self.state
        self.model.train()
        state.phase = "train"
        self.sampler.set_epoch(state.epoch)
        self.callbacks.on_epoch_start(state)
        total_loss, correct, seen = 0.0, 0, 0
        shares = self.sampler.step_shares() if self.sharded else None
        for index, (images, labels) in enumerate(self.train_loader):
            self.callbacks.on_batch_start(state)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            logits = self.forward(images)
            loss = self.loss_fn(logits, labels)
            self.callbacks.on_forward(state, logits, labels)  # the ExplodingTensor rule sees non-finite logits here
            value = float(loss.detach())
            if not math.isfinite(value):
                # Before the step: the weights and the last checkpoint stay good.
                raise self._diverged(f"the training loss became {value}")
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the step's images makes
            # that average the gradient of the whole batch's mean loss, as in one process (uneven last batches too).
            (loss * shares[index] if shares is not None else loss).backward()
            self.callbacks.on_after_backward(state, loss)
            self._set_lr(state.step)
            try:
                self.optimizer.step()
            except RuntimeError as exc:  # e.g. Adam's step size lr / (1 - beta1) past the float32 range
                if "overflow" not in str(exc):
                    raise
                raise self._diverged(f"the optimizer step overflowed ({exc})") from exc
            state.step += 1
            total_loss += value * len(labels)
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += len(labels)
            self.callbacks.on_batch_end(state, value, len(labels))
        return self._averages(total_loss, correct, seen)

    def _averages(self, total_loss: float, correct: float, seen: float) -> tuple[float, float]:
        """Mean loss and accuracy of an epoch (over every rank's images when the ranks share them)."""
        if self.sharded:
            from dogclf.training.distributed import all_reduce_sums

            total_loss, correct, seen = all_reduce_sums((total_loss, correct, seen), self.device)
        if not seen:
            return float("nan"), float("nan")
        return total_loss / seen, correct / seen

    def _diverged(self, what: str) -> TrainingDivergedError:
        state = self.state
        kept = (
            f"The checkpoint of epoch {state.epoch - 1}, the last good one, is kept in {self.checkpoint_path}."
            if self.checkpoint_path is not None and state.epoch > 1 and self.checkpoint_path.is_file()
            else "No epoch finished, so there is no checkpoint to keep."
        )
        suggested = self.config.lr / 10 if self.config.lr <= 0.1 else 1e-3  # 1e-3: the default
        return TrainingDivergedError(
            f"{what[0].upper()}{what[1:]} at epoch {state.epoch}, step {state.step + 1} (lr {self.config.lr:g}): "
            f"training stopped. {kept} Train again with a lower --lr (e.g. {suggested:g}), or check the data and "
            "the weights."
        )

    def _validate(self) -> tuple[float, float]:
        if self.valid_loader is None and not self.sharded:  # a rank with no valid images still sums with the rest
            return float("nan"), float("nan")
        state = self.state
        self.model.eval()
        state.phase = "eval"
        self.callbacks.on_eval_start(state)
        total_loss, correct, seen = 0.0, 0, 0
        forward = self.model if self.sharded else self.forward  # no DDP: ranks may hold different batch counts
        with torch.inference_mode():
            for images, labels in self.valid_loader or ():
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                logits = forward(images)
                loss = float(self.eval_loss_fn(logits, labels))
                total_loss += loss * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                self.callbacks.on_eval_batch_end(state, loss, len(labels))
        state.phase = "train"
        return self._averages(total_loss, correct, seen)


def _num_classes(model: DogClassifierNet) -> int:
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    return int(last[-1].out_features) if last else 0


@dataclass
class _Best:
    """The epoch with the lowest validation loss so far, and a copy of its trained weights (for ``keep="best"``)."""

    epoch: int = 0
    valid_loss: float = float("inf")
    state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, valid_loss: float, module: torch.nn.Module) -> None:
        if valid_loss == valid_loss and valid_loss < self.valid_loss:  # NaN (no validation data) never improves
            self.epoch, self.valid_loss = epoch, valid_loss
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def to_payload(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        return {"epoch": self.epoch, "valid_loss": self.valid_loss, "state": self.state}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> _Best:
        if not payload:
            return cls()
        return cls(int(payload["epoch"]), float(payload["valid_loss"]), dict(payload["state"]))
