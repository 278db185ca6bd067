"""Image transforms derived from a backbone's preprocessing contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dogclf._compat import import_torchvision
from dogclf.backbones.spec import Preprocessing

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["eval_resize_crop", "eval_transform", "train_transform"]


def _interpolation(name: str) -> object:
    modes = import_torchvision().transforms.InterpolationMode
    return {"nearest": modes.NEAREST, "bilinear": modes.BILINEAR, "bicubic": modes.BICUBIC}[name]


def eval_resize_crop(pre: Preprocessing) -> Callable[[Image.Image], Image.Image]:
    """The pixel part of :func:`eval_transform`: resize the shorter side to ``resize_size``, centre-crop (PIL only)."""
    t = import_torchvision().transforms
    return t.Compose(
        [
            t.Resize(pre.resize_size, interpolation=_interpolation(pre.interpolation), antialias=True),
            t.CenterCrop(pre.input_size),
        ]
    )


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to ``resize_size``, centre-crop ``input_size``, normalise."""
    t = import_torchvision().transforms
    return t.Compose([eval_resize_crop(pre), t.ToTensor(), t.Normalize(pre.mean, pre.std)])


def train_transform(pre: Preprocessing, *, augment: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """The training transform.

    Without ``augment`` it is the eval transform (so frozen-backbone features are
    deterministic); with it, a random resized crop and horizontal flip.
    """
    if not augment:
        return eval_transform(pre)
    t = import_torchvision().transforms
    return t.Compose(
        [
            t.RandomResizedCrop(pre.input_size, interpolation=_interpolation(pre.interpolation), antialias=True),
            t.RandomHorizontalFlip(),
            t.ToTensor(),
            t.Normalize(pre.mean, pre.std),
        ]
    )
