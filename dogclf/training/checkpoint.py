"""Per-epoch training checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from dogclf.errors import ModelDirError

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "restore_rng", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = 1


def save_checkpoint(
    path: Path,
    *,
    epoch: int,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    fingerprint: dict[str, Any],
    best: dict[str, Any] | None = None,
) -> None:
    """Writes model, optimizer, epoch, history, RNG state (and the best epoch's weights) to ``path`` atomically.

    The file is written beside ``path`` and renamed over it, so an interruption
    leaves the previous checkpoint intact.
    """
    payload = {
        "format": _FORMAT,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "fingerprint": fingerprint,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
        "best": best,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        ModelDirError: If it is missing or unreadable.
    """
    if not path.is_file():
        raise ModelDirError(
            f"No checkpoint to resume from at {str(path)!r}. Start a new run without --resume, "
            "or point --out at the folder of the interrupted run."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelDirError(
            f"Checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); delete it to start over."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ModelDirError(f"{str(path)!r} is not a dogclf checkpoint of format {_FORMAT}.")
    return payload


def restore_rng(payload: dict[str, Any]) -> None:
    """Restores the RNG states saved in a checkpoint."""
    torch.set_rng_state(payload["torch_rng"])
    if payload.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    state = payload["python_rng"]
    random.setstate((state[0], tuple(state[1]), state[2]))
