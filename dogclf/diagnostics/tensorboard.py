"""``--tensorboard DIR``: the training's scalars for TensorBoard (``torch.utils.tensorboard``).

Epoch metrics, learning rates, the per-step training loss and rule findings; needs ``dogclf[tensorboard]``.

Scalars, by tag:

===========================  ======================  ==============================================
tag                          x axis                  value
===========================  ======================  ==============================================
``loss/train``, ``loss/valid``  epoch                mean loss of the epoch / of the validation split
``top1/train``, ``top1/valid``  epoch                top-1 accuracy (fraction)
``time/epoch_seconds``       epoch                   the epoch's wall time
``lr/<group>``               epoch                   learning rate of each optimizer group (``head``, ``backbone``)
``loss/train_step``          step                    each optimizer step's mini-batch loss
``rules/<Rule>``             epoch                   1 in an epoch the rule fired, else 0
===========================  ======================  ==============================================

and each finding's line as text under ``rules``. In a SageMaker job given a ``TensorBoardOutputConfig``, the folder
comes from ``/opt/ml/input/config/tensorboardoutputconfig.json`` (see :func:`job_tensorboard_dir`), which the
platform uploads to S3 as the job runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dogclf.diagnostics.errors import MissingExtraError
from dogclf.diagnostics.rules.base import Finding, RuleSet
from dogclf.training.callbacks import Callback, TrainState

__all__ = ["TensorBoardLogger", "job_tensorboard_dir"]

_EPOCH_SCALARS = {
    "train_loss": "loss/train",
    "valid_loss": "loss/valid",
    "train_top1": "top1/train",
    "valid_top1": "top1/valid",
    "seconds": "time/epoch_seconds",
}
_GROUPS = ("head", "backbone")
_INSTALL = 'TensorBoard logging needs the tensorboard package; install it with: pip install "dogclf[tensorboard]"'


def job_tensorboard_dir(environ: Mapping[str, str]) -> Path | None:
    """The TensorBoard folder of a SageMaker job given a ``TensorBoardOutputConfig``, if any (its ``LocalPath``).

    The configuration is ``TENSORBOARD_CONFIG_FILE_PATH`` when set, else
    ``$SAGEMAKER_BASE_DIR/input/config/tensorboardoutputconfig.json`` (``/opt/ml`` by default).
    """
    explicit = environ.get("TENSORBOARD_CONFIG_FILE_PATH")
    base = Path(environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    path = Path(explicit) if explicit else base / "input/config/tensorboardoutputconfig.json"
    if not path.is_file():
        return None
    local = json.loads(path.read_text(encoding="utf-8")).get("LocalPath") or "/opt/ml/output/tensorboard"
    return Path(local)


def _summary_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingExtraError(f"{_INSTALL} ({exc})") from exc
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardLogger(Callback):
    """Writes the training's scalars to a TensorBoard log folder (see the module docstring for the tags).

    Args:
        log_dir: The TensorBoard log folder (``tensorboard --logdir DIR``).
        rules: The rule set whose findings to log (place this callback after it, so an epoch's findings are in).
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, rules: RuleSet | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.rules = rules
        self.writer: Any = None
        if importlib.util.find_spec("tensorboard") is None:  # fail now, not after the data has been read
            raise MissingExtraError(_INSTALL)

    def on_train_start(self, state: TrainState) -> None:
        """Opens the event file."""
        self.close()
        self.writer = _summary_writer(self.log_dir)

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """The step's mini-batch loss."""
        if self.writer is not None and math.isfinite(loss):
            self.writer.add_scalar("loss/train_step", loss, state.step)

    def add_finding(self, finding: Finding) -> None:
        """Logs a new finding's line as text (the rule set calls this)."""
        if self.writer is not None:
            self.writer.add_text("rules", finding.line(), finding.epoch)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """The epoch's metrics, learning rates and rule series."""
        if self.writer is None:
            return
        epoch = state.epoch
        for key, tag in _EPOCH_SCALARS.items():
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, epoch)
        for index, group in enumerate(state.optimizer.param_groups):
            name = _GROUPS[index] if index < len(_GROUPS) else f"group{index}"
            self.writer.add_scalar(f"lr/{name}", float(group["lr"]), epoch)
        for rule in self.rules.rules if self.rules is not None else ():
            self.writer.add_scalar(f"rules/{rule.name}", 1.0 if self.rules.fired_in(rule.name, epoch) else 0.0, epoch)
        self.writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        """Closes the event file."""
        self.close()

    def close(self) -> None:
        """Flushes and closes the event file; calling it again is harmless."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
