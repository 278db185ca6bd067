"""Building a backbone with pretrained weights: ImageNet download, a local file, or none."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.backbones.spec import BackboneSpec
from dogclf.errors import WeightsError, WeightsUnavailableError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "backbone_digest",
    "build_backbone",
    "check_weights_available",
    "load_state_dict_file",
    "parse_weights",
    "state_dict_mismatch",
    "weights_label",
]

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


_HF_HOST = "huggingface.co"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a Hub repository, in order
_TRUE = ("1", "true", "yes", "on")


def check_weights_available(
    spec: BackboneSpec,
    weights: str | os.PathLike[str] | None = "imagenet",
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> None:
    """Fails at once when the pretrained weights are not cached and their source cannot be reached.

    Called before the data scan, so an offline machine learns in a second, not after the scan and a minute of
    download retries, that the weights are missing. Weights already in the provider's cache (torchvision's
    ``$TORCH_HOME/hub/checkpoints``, the Hugging Face cache), local files, ``none``, and backbones whose provider
    finds its weights itself (no ``weights_url`` or no known cache) pass without touching the network; otherwise one
    ``HEAD`` request with ``timeout`` tells whether the source answers (any HTTP status counts as reachable).

    Args:
        spec: The backbone.
        weights: The ``--weights`` choice.
        environ: The environment (``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HOME``); ``os.environ``
            when ``None``.
        timeout: Seconds to wait for the source to answer.

    Raises:
        WeightsUnavailableError: The backbone has no pretrained weights, or they are neither cached nor reachable.
    """
    if parse_weights(weights) != "imagenet":
        return
    _check_has_pretrained(spec)
    env = os.environ if environ is None else environ
    url = spec.weights_url
    if not url:
        return
    hub_repo = _hub_repo(url)
    if hub_repo is not None:
        if _in_hub_cache(hub_repo, env):
            return
        if env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
            raise WeightsUnavailableError(_unavailable_message(spec, OSError("HF_HUB_OFFLINE is set")))
        probe = f"{_hub_endpoint(env)}/{hub_repo}/resolve/main/{_HF_FILES[0]}"
    elif spec.weights_cache is not None and spec.weights_filename:
        if os.path.isfile(os.path.join(spec.weights_cache(), spec.weights_filename)):
            return
        probe = url
    else:
        return  # no way to tell whether the provider has them cached; let it try
    problem = _unreachable(probe, timeout)
    if problem is not None:
        raise WeightsUnavailableError(_unavailable_message(spec, problem))


def _hub_repo(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/")
    return path if parts.hostname == _HF_HOST and path.count("/") == 1 else None


def _hub_endpoint(environ: Mapping[str, str]) -> str:
    endpoint = environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return endpoint.rstrip("/")


def _in_hub_cache(repo: str, environ: Mapping[str, str]) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    cache = environ.get("HF_HUB_CACHE") or (
        os.path.join(environ["HF_HOME"], "hub") if environ.get("HF_HOME") else constants.HF_HUB_CACHE
    )
    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str) for name in _HF_FILES)


def _unreachable(url: str, timeout: float) -> OSError | None:
    """``None`` if ``url``'s server answers a HEAD request at all, else the error of the attempt."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "dogclf"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered (a redirect to a CDN, 401, 404, ...): the download will say more
    except (urllib.error.URLError, OSError) as exc:
        return exc


def _check_has_pretrained(spec: BackboneSpec) -> None:
    if spec.weights_source == "none" and not spec.weights_url:
        raise WeightsUnavailableError(
            f"Backbone {spec.name!r} has no pretrained ImageNet weights. Use --weights none, or --weights PATH "
            "with a state dict for it."
        )


def _build_pretrained(spec: BackboneSpec, *, progress: bool) -> nn.Module:
    _check_has_pretrained(spec)
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


def state_dict_mismatch(own: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """How ``state`` differs from a module's own state dict ``own``: missing, unexpected and misshapen keys, or ``""``.

    E.g. ``"2 missing (e.g. fc.weight, fc.bias); 1 with the wrong shape (e.g. conv1.weight (8, 3) != (16, 3))"``.
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} with the wrong shape (e.g. {', '.join(wrong_shape[:3])})")
    return "; ".join(parts)


def _load_into(module: nn.Module, state: dict[str, Any], *, spec: BackboneSpec, path: Path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_prefixes or ("\0",))}
    mismatch = state_dict_mismatch(module.state_dict(), state)
    if mismatch:
        raise WeightsError(
            f"Weights file {str(path)!r} does not fit backbone {spec.name!r}: {mismatch} keys. "
            f"Expected a state dict of {spec.weights_source or spec.name} (classifier keys "
            f"{', '.join(spec.classifier_prefixes) or 'none'} are ignored)."
        )
    module.load_state_dict(state, strict=True)


def backbone_digest(module: nn.Module) -> str:
    """sha256 of a backbone's class and every tensor of its state dict (names, dtypes, shapes and bytes).

    This is the honest identity of "the weights the features came from": whatever file, download or seed they came
    from, the same tensors give the same digest. Hashing runs at about 1 GB/s, so a ResNet-50 takes ~0.1 s.
    """
    import torch

    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}\n".encode())
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            digest.update(f"{name}={tensor!r}\n".encode())
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
