"""The training job end to end: data in, a saved, calibrated and evaluated model directory out.

:func:`train` (:mod:`.run`) runs the steps in order (read the data, extract features once, fit the head, calibrate,
fit the novelty score, save, evaluate, write the reports) and leaves each step to its package: the epoch loop, the
L-BFGS fit and the calibration are in :mod:`dogclf.training`, the files in :mod:`dogclf.artifact`. :mod:`.reports`
writes what ``--output-dir`` asks for; :mod:`.options` and :mod:`.train_command` are ``dogclf train``'s options and
run, which the SageMaker entry point shares. ``dogclf tune`` (:mod:`dogclf.tuning`) runs many such fits.
Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "TrainResult": "dogclf.pipeline.run",
    "train": "dogclf.pipeline.run",
}

__all__ = ["TrainResult", "train"]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dogclf.pipeline.run import TrainResult, train
