"""Training: the loop, its configuration, callbacks, checkpoints, calibration, and ``train()`` step by step.

=====================  ===============================================================================
module                 what it holds
=====================  ===============================================================================
``run``                :func:`train`: folder -> splits -> model -> trained head -> model directory, as a
                       short list of named steps
``config``             :class:`TrainConfig` (hyperparameters) and device selection
``loop``               :class:`Trainer`: epochs, optimizer steps, validation, per-epoch checkpoints
``head``               training the head alone on cached backbone features, through the same ``Trainer``
``callbacks``          the loop's hook points (:class:`Callback`, :class:`TrainState`), the epoch log line
``checkpoint``         writing and reading the per-epoch checkpoint
``calibration``        temperature scaling and the "unknown" threshold fitted after training
=====================  ===============================================================================

Names are imported lazily, so ``import dogclf.training`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "TrainResult": "dogclf.training.run",
    "train": "dogclf.training.run",
    "TrainConfig": "dogclf.training.config",
    "resolve_device": "dogclf.hardware",
    "Trainer": "dogclf.training.loop",
    "TrainBatches": "dogclf.training.loop",
    "make_optimizer": "dogclf.training.loop",
    "Callback": "dogclf.training.callbacks",
    "TrainState": "dogclf.training.callbacks",
    "format_epoch_line": "dogclf.training.callbacks",
    "Calibration": "dogclf.training.calibration",
    "calibrate": "dogclf.training.calibration",
    "fit_head": "dogclf.training.head",
}

__all__ = [
    "Calibration",
    "Callback",
    "TrainBatches",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "calibrate",
    "fit_head",
    "format_epoch_line",
    "make_optimizer",
    "resolve_device",
    "train",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.hardware import resolve_device
    from dogclf.training.calibration import Calibration, calibrate
    from dogclf.training.callbacks import Callback, TrainState, format_epoch_line
    from dogclf.training.config import TrainConfig
    from dogclf.training.head import fit_head
    from dogclf.training.loop import TrainBatches, Trainer, make_optimizer
    from dogclf.training.run import TrainResult, train
