"""Image transforms derived from a backbone's preprocessing contract.

The eval transform (resize the shorter side, centre-crop, to a tensor, normalise) is written with Pillow and torch
alone, computing exactly what torchvision's ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` compute on a Pillow
image (a test checks it bit for bit): importing torchvision costs about a second, because it pulls in
``torch._dynamo``, and a short training run, a prediction or a server start need not pay it. The augmenting train
transform still uses torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from dogclf._compat import import_torchvision
from dogclf.backbones.spec import Preprocessing

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["EvalTransform", "eval_transform", "train_transform"]


def _interpolation(name: str) -> object:
    modes = import_torchvision().transforms.InterpolationMode
    return {"nearest": modes.NEAREST, "bilinear": modes.BILINEAR, "bicubic": modes.BICUBIC}[name]


class EvalTransform:
    """Resize the shorter side to ``resize_size``, centre-crop ``input_size``, scale to 0..1, normalise.

    Calling it on an 8-bit Pillow image (``load_rgb`` gives RGB) returns a ``(C, input_size, input_size)`` float32
    tensor equal to torchvision's ``Compose([Resize(resize_size, interpolation, antialias=True),
    CenterCrop(input_size), ToTensor(), Normalize(mean, std)])``; a crop larger than the image is padded with zeros,
    as torchvision pads.

    Args:
        pre: The backbone's preprocessing contract.
    """

    # Pillow's NEAREST, BILINEAR and BICUBIC filters, as torchvision maps its InterpolationMode to them.
    _RESAMPLE: ClassVar[dict[str, int]] = {"nearest": 0, "bilinear": 2, "bicubic": 3}

    def __init__(self, pre: Preprocessing) -> None:
        if pre.interpolation not in self._RESAMPLE:
            raise ValueError(f"unknown interpolation {pre.interpolation!r}; use one of {', '.join(self._RESAMPLE)}")
        self.pre = pre

    def __repr__(self) -> str:
        return f"EvalTransform({self.pre!r})"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The normalised ``(C, input_size, input_size)`` float32 tensor of ``image``."""
        import numpy as np
        import torch

        pre = self.pre
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = pre.resize_size, int(pre.resize_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, self._RESAMPLE[pre.interpolation])
        image = image.crop(_centre_box(image.size, pre.input_size))
        pixels = np.array(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        mean = torch.as_tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


def _centre_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """The box of a ``crop x crop`` centre crop of an image of ``size``; outside the image Pillow fills zeros."""
    width, height = size
    # torchvision pads (crop - side) // 2 before the image where the crop is larger, else starts at round(...).
    left = -((crop - width) // 2) if crop > width else round((width - crop) / 2.0)
    top = -((crop - height) // 2) if crop > height else round((height - crop) / 2.0)
    return left, top, left + crop, top + crop


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to ``resize_size``, centre-crop ``input_size``, normalise: :class:`EvalTransform`."""
    return EvalTransform(pre)


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
