"""Backbones made on demand from any timm model, named ``timm/<model>``."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from dogclf._compat import import_timm
from dogclf.backbones.spec import BackboneSpec, Preprocessing
from dogclf.errors import UnknownBackboneError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["PREFIX", "timm_spec"]

PREFIX = "timm/"


def _build(model_name: str, *, pretrained: bool = False, progress: bool = True) -> nn.Module:
    timm = import_timm()
    del progress  # timm downloads through huggingface_hub, which shows its own progress bar.
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0)


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def timm_spec(name: str) -> BackboneSpec:
    """Builds the spec of ``timm/<model>`` from timm's own pretrained config.

    Args:
        name: ``"timm/<model>"``, e.g. ``"timm/efficientnet_b0"``.

    Returns:
        A spec whose preprocessing follows timm's ``pretrained_cfg``.

    Raises:
        UnknownBackboneError: If timm has no such model.
    """
    import math

    import torch

    timm = import_timm()
    model_name = name[len(PREFIX) :]
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name[:6]}*")[:10] if model_name else []
        hint = f" Similar timm models: {', '.join(close)}." if close else ""
        raise UnknownBackboneError(
            f"timm has no model {model_name!r} (asked for backbone {name!r}).{hint} "
            "timm.list_models('*') lists them all."
        )
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg
    input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    hub_id = cfg.get("hf_hub_id")
    url = f"https://huggingface.co/{hub_id}" if hub_id else (cfg.get("url") or None)
    classifier = cfg.get("classifier") or ""
    return BackboneSpec(
        name=name,
        build=partial(_build, model_name),
        num_features=int(model.num_features),
        preprocessing=Preprocessing(
            input_size=input_size,
            resize_size=max(input_size, math.floor(input_size / crop_pct)),
            mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
            interpolation=cfg.get("interpolation", "bicubic")
            if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest")
            else "bilinear",
        ),
        weights_source=f"timm pretrained_cfg ({hub_id or url or 'no pretrained weights'})",
        weights_url=url,
        weights_file="model.safetensors" if hub_id else None,
        weights_cache=_hf_cache,
        weights_offline_hint=(
            f"download model.safetensors from {url} on a connected machine and pass it with "
            "--weights /path/to/model.safetensors, or copy a Hugging Face cache that holds it into "
            f"{_hf_cache()} and set HF_HUB_OFFLINE=1 (that cache is not a flat folder of files)"
            if hub_id
            else ""
        ),
        classifier_prefixes=(f"{classifier}.",) if classifier else (),
        description=f"timm model {model_name}",
        distribution=f"timm {timm.__version__}",
    )
