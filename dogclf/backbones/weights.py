"""Building a backbone with pretrained weights: ImageNet download, a local file, or none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.backbones.spec import BackboneSpec
from dogclf.errors import WeightsError, WeightsUnavailableError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_backbone", "load_state_dict_file", "parse_weights", "weights_label"]

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module")


def parse_weights(value: str | os.PathLike[str] | None) -> str | Path | None:
    """Normalises a ``--weights`` value: ``"imagenet"``, ``None`` (``"none"``) or a Path."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return Path(value)
    lowered = value.strip().lower()
    if lowered == "imagenet":
        return "imagenet"
    if lowered in ("none", "random", ""):
        return None
    return Path(value).expanduser()


def weights_label(value: str | os.PathLike[str] | None) -> str:
    """How a weights choice is recorded: ``"imagenet"``, ``"none"`` or the file path."""
    choice = parse_weights(value)
    return "none" if choice is None else str(choice)


def build_backbone(
    spec: BackboneSpec, weights: str | os.PathLike[str] | None = "imagenet", *, progress: bool = True
) -> nn.Module:
    """Builds the backbone of ``spec`` with the requested weights.

    Args:
        spec: The backbone.
        weights: ``"imagenet"`` to use the provider's pretrained weights
            (downloaded into its cache on first use), ``None``/``"none"`` for
            random initialisation, or a path to a local weights file
            (``.safetensors``, or a state dict saved by ``torch.save``, loaded
            with ``weights_only=True``).
        progress: Show a download progress bar.

    Returns:
        The feature extractor.

    Raises:
        WeightsUnavailableError: The weights could not be fetched, or the file is missing.
        WeightsError: The file does not fit the backbone.
    """
    choice = parse_weights(weights)
    if choice == "imagenet":
        return _build_pretrained(spec, progress=progress)
    module = spec.build(pretrained=False, progress=progress)
    if choice is None:
        return module
    path = Path(choice)
    _load_into(module, load_state_dict_file(path), spec=spec, path=path)
    return module


def _build_pretrained(spec: BackboneSpec, *, progress: bool) -> nn.Module:
    if spec.weights_source == "none" and not spec.weights_url:
        raise WeightsUnavailableError(
            f"Backbone {spec.name!r} has no pretrained ImageNet weights. Use --weights none, or --weights PATH "
            "with a state dict for it."
        )
    try:
        return spec.build(pretrained=True, progress=progress)
    except (OSError, ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        if isinstance(exc, (RuntimeError, ValueError)) and not _looks_like_download_error(exc):
            raise  # a bug in the builder, not a download problem
        raise WeightsUnavailableError(_unavailable_message(spec, exc)) from exc


def _looks_like_download_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("url", "connect", "download", "network", "offline", "hub", "resolve"))


def _unavailable_message(spec: BackboneSpec, exc: BaseException) -> str:
    filename = spec.weights_filename or "the weights file"
    cache = spec.weights_cache() if spec.weights_cache else None
    where = f"in the cache folder {cache}" if cache else "in the provider's cache"
    source = spec.weights_url or spec.weights_source
    offline = spec.weights_offline_hint or (
        f"download {source} on a connected machine and either copy it into {cache or 'that cache'}, or pass it "
        f"directly with --weights /path/to/{filename}"
    )
    return (
        f"Could not get the pretrained ImageNet weights for backbone {spec.name!r} ({spec.weights_source}) "
        f"from {source}: {type(exc).__name__}: {exc}. The file {filename} is not {where}. "
        f"If this machine is offline, {offline} (weights=... in Python); --weights none trains from random "
        "initialisation."
    )


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Reads a state dict from ``path`` without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A checkpoint that wraps the state dict
    under ``state_dict``/``model``/``module`` is unwrapped.

    Raises:
        WeightsUnavailableError: The file does not exist.
        WeightsError: The file cannot be read safely or holds no state dict.
    """
    import torch

    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file {str(path)!r} does not exist. Pass --weights imagenet, --weights none, or the path "
            "of an existing .pth/.pt/.safetensors file."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Could not read weights file {str(path)!r} safely ({type(exc).__name__}: {exc}). dogclf loads only "
            "safetensors files or tensor-only state dicts (torch.load with weights_only=True); re-save it with "
            "torch.save(model.state_dict(), path)."
        ) from exc
    for key in _STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"Weights file {str(path)!r} does not hold a state dict (a mapping of names to tensors).")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_into(module: nn.Module, state: dict[str, Any], *, spec: BackboneSpec, path: Path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_prefixes or ("\0",))}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with the wrong shape (e.g. {', '.join(wrong_shape[:3])})")
        raise WeightsError(
            f"Weights file {str(path)!r} does not fit backbone {spec.name!r}: {'; '.join(parts)} keys. "
            f"Expected a state dict of {spec.weights_source or spec.name} (classifier keys "
            f"{', '.join(spec.classifier_prefixes) or 'none'} are ignored)."
        )
    module.load_state_dict(state, strict=True)
