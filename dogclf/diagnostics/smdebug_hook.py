"""SageMaker Debugger's smdebug hook, driven by dogclf's training loop.

In a SageMaker training job whose request carried a ``DebugHookConfig``, the platform writes the hook's
configuration to ``/opt/ml/input/config/debughookconfig.json`` (smdebug looks there, or where
``SMDEBUG_CONFIG_FILE_PATH`` points); :func:`job_hook_config` finds it and the hook is created from it, so tensors
go where the job's rules read them. Locally, ``--smdebug-out DIR`` creates a hook writing to ``DIR``. Either way the
hook is registered on the module that trains (the head on the feature path, the whole network otherwise) and on
the loss, and the callback switches it between TRAIN and EVAL modes as the loop switches phase.

smdebug is optional (``dogclf[debug]``) and imported only here, through :mod:`dogclf.diagnostics.smdebug_compat`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dogclf.diagnostics.errors import OutputDirError
from dogclf.diagnostics.smdebug_compat import import_smdebug
from dogclf.training.callbacks import Callback, TrainState

__all__ = ["DEFAULT_COLLECTIONS", "SmdebugHook", "SmdebugOutDirError", "job_hook_config"]

DEFAULT_COLLECTIONS = ("losses", "weights", "biases", "gradients")
HOOK_CONFIG = "debughookconfig.json"


class SmdebugOutDirError(OutputDirError):
    """``--smdebug-out`` points at a folder that already holds another run's tensors."""


def job_hook_config(environ: Mapping[str, str]) -> Path | None:
    """The Debugger hook configuration a SageMaker job was given, if any.

    ``SMDEBUG_CONFIG_FILE_PATH`` when set, else ``$SAGEMAKER_BASE_DIR/input/config/debughookconfig.json``
    (``SAGEMAKER_BASE_DIR`` defaults to ``/opt/ml``, the training container's base folder).
    """
    explicit = environ.get("SMDEBUG_CONFIG_FILE_PATH")
    base = Path(environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    path = Path(explicit) if explicit else base / "input/config" / HOOK_CONFIG
    return path if path.is_file() else None


class SmdebugHook(Callback):
    """Saves losses, weights, biases and gradients with smdebug from inside dogclf's loop.

    Args:
        out_dir: Where to write tensors (a new folder); exclusive with ``json_config``.
        json_config: A Debugger hook configuration file (what a SageMaker job is given).
        save_interval: Save every this many steps (with ``out_dir``; a job's configuration says its own).
        include_collections: smdebug collections to save (with ``out_dir``).

    Raises:
        SmdebugUnavailableError: When smdebug cannot be imported (see :mod:`~dogclf.diagnostics.smdebug_compat`).
        SmdebugOutDirError: When ``out_dir`` already holds files.
    """

    def __init__(
        self,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        json_config: str | os.PathLike[str] | None = None,
        save_interval: int = 10,
        include_collections: Sequence[str] = DEFAULT_COLLECTIONS,
    ) -> None:
        if (out_dir is None) == (json_config is None):
            raise ValueError("SmdebugHook needs exactly one of out_dir and json_config.")
        if save_interval < 1:
            raise ValueError(f"smdebug save interval must be >= 1, got {save_interval!r}")
        if out_dir is not None and Path(out_dir).exists() and any(Path(out_dir).iterdir()):
            raise SmdebugOutDirError(
                f"--smdebug-out {str(out_dir)!r} already holds files (smdebug does not mix runs' tensors); "
                "choose a new folder or delete this one."
            )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.json_config = Path(json_config) if json_config is not None else None
        self.save_interval = save_interval
        self.include_collections = list(include_collections)
        self.smd = import_smdebug()  # fail now, not after the data has been read
        self.hook: Any = None
        self._added: list[tuple[dict[int, Any], set[int]]] = []

    @property
    def where(self) -> str:
        """Where the tensors go, for the log."""
        if self.out_dir is not None:
            return str(self.out_dir)
        return f"the folder named in {self.json_config}"

    def on_train_start(self, state: TrainState) -> None:
        """Creates the hook and registers the module that trains and the loss."""
        smd = self.smd
        if self.json_config is not None:
            self.hook = smd.Hook.create_from_json_file(str(self.json_config))
        else:
            self.hook = smd.Hook(
                out_dir=str(self.out_dir),
                save_config=smd.SaveConfig(save_interval=self.save_interval),
                include_collections=self.include_collections,
            )
        module = state.forward_module if state.forward_module is not None else state.model
        before = _hook_tables(module, state.loss_fn)
        self.hook.register_module(module)
        self.hook.register_loss(state.loss_fn)
        self._added = [(table, set(table) - keys) for table, keys in before]

    def on_epoch_start(self, state: TrainState) -> None:
        """TRAIN mode for the epoch's training batches."""
        if self.hook is not None:
            self.hook.set_mode(self.smd.modes.TRAIN)

    def on_eval_start(self, state: TrainState) -> None:
        """EVAL mode for the validation pass."""
        if self.hook is not None:
            self.hook.set_mode(self.smd.modes.EVAL)

    def on_train_end(self, state: TrainState) -> None:
        """Closes the hook (writes the last step and marks the run as ended)."""
        self.close()

    def close(self) -> None:
        """Closes the hook and removes what it added to the model; calling it again is harmless.

        Removing its hooks keeps later forward passes (calibration, serving) from counting as steps.
        """
        if self.hook is None:
            return
        hook, self.hook = self.hook, None
        hook.close()
        for table, added in self._added:
            for key in added:
                table.pop(key, None)
        self._added = []


def _hook_tables(module: torch.nn.Module, loss_fn: torch.nn.Module) -> list[tuple[dict[int, Any], set[int]]]:
    """Every hook table smdebug adds to, with the keys it holds now.

    Those are the forward and pre-forward hooks of each module and each parameter's backward hooks. smdebug keeps
    no handles, so its hooks are found as the keys added.
    """
    tables: list[dict[int, Any]] = []
    for sub in [*module.modules(), loss_fn]:
        tables += [sub._forward_hooks, sub._forward_pre_hooks]
    for parameter in module.parameters():
        if parameter.requires_grad:
            if parameter._backward_hooks is None:
                parameter.register_hook(_noop).remove()  # creates the table, so its keys can be compared
            tables.append(parameter._backward_hooks)
    return [(table, set(table)) for table in tables]


def _noop(grad: torch.Tensor) -> None:
    return None
