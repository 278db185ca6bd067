"""Training: the epoch loop, the L-BFGS head fit, their configuration, callbacks, checkpoints and calibration.

=====================  ===============================================================================
module                 what it holds
=====================  ===============================================================================
``config``             :class:`TrainConfig` (hyperparameters)
``loop``               :class:`Trainer`: epochs, optimizer steps, validation, per-epoch checkpoints
``head``               training the head alone on cached backbone features, through the same ``Trainer``
``lbfgs``              the default head fit: full-batch L-BFGS with a cross-validated L2 penalty
``schedule``           optimizers, learning-rate schedules, the loss
``callbacks``          the loop's hook points (:class:`Callback`, :class:`TrainState`), the epoch log line
``log_line``           the epoch and test lines (SageMaker's metric regexes read them)
``checkpoint``         writing and reading the per-epoch checkpoint
``distributed``        several processes (``torchrun``) sharing the data and the gradients
``calibration``        temperature scaling and the "unknown" threshold fitted after training
=====================  ===============================================================================

``train()``, which runs these steps in order, is the pipeline layer above: :func:`dogclf.pipeline.train`
(also ``dogclf.train``). The device helper :func:`resolve_device` lives in :mod:`dogclf.hardware`.

Names are imported lazily, so ``import dogclf.training`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
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
    "TrainState",
    "Trainer",
    "calibrate",
    "fit_head",
    "format_epoch_line",
    "make_optimizer",
    "resolve_device",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.hardware import resolve_device
    from dogclf.training.calibration import Calibration, calibrate
    from dogclf.training.callbacks import Callback, TrainState, format_epoch_line
    from dogclf.training.config import TrainConfig
    from dogclf.training.head import fit_head
    from dogclf.training.loop import TrainBatches, Trainer, make_optimizer
