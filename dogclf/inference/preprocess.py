"""Images to network inputs, split where the work belongs.

:class:`ImagePreparer` does the per-image work that needs no torch: decode (JPEG draft mode for large photos), EXIF
orientation, RGB, resize and centre crop, exactly as :class:`dogclf.data.transforms.EvalTransform` does, ending in a
``(H, W, 3)`` uint8 array. It runs in decoding threads (Pillow releases the GIL) without touching torch's thread
pools. :class:`Normaliser` then turns a stacked ``(N, H, W, 3)`` uint8 batch into the normalised float input on the
forward pass's device, in one vectorised step; the uint8 layout is already channels-last, so nothing is transposed,
and on CUDA only a quarter of the float bytes cross the bus. Scaling and normalising are the same float32 operations
as ``ToTensor`` + ``Normalize``, so the inputs are bit-for-bit those of the training transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from dogclf.backbones.spec import Preprocessing

__all__ = ["ImagePreparer", "Normaliser", "stack"]


class ImagePreparer:
    """Decodes and resizes one image into a ``(input_size, input_size, 3)`` uint8 array (thread-safe, no torch).

    Args:
        preprocessing: The backbone's input contract.
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        from dogclf.data.transforms import EvalTransform

        self.preprocessing = preprocessing
        self._resize_crop = EvalTransform(preprocessing).resize_crop

    def from_pil(self, image: Image.Image) -> np.ndarray:
        """Resizes and crops a decoded RGB image."""
        return np.asarray(self._resize_crop(image), dtype=np.uint8)

    def __call__(self, source: Any) -> np.ndarray:
        """Decodes a path, the bytes of an image file, or a PIL image, then resizes and crops it.

        Raises:
            UnreadableImageError: With the path and the reason.
        """
        from dogclf.data.images import load_rgb

        return self.from_pil(load_rgb(source, min_size=self.preprocessing.resize_size))


def stack(arrays: Sequence[np.ndarray], *, pin: bool = False) -> torch.Tensor:
    """One ``(N, H, W, 3)`` uint8 CPU tensor of prepared images (page-locked with ``pin``, for CUDA copies)."""
    batch = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 0, 0, 3, dtype=torch.uint8)
    return batch.pin_memory() if pin else batch


class Normaliser:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` normalised float32 on ``device`` (channels-last memory).

    Args:
        preprocessing: Mean and std.
        device: Where the forward pass runs.
    """

    def __init__(self, preprocessing: Preprocessing, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalises a uint8 NHWC batch (a float NCHW batch is taken as already normalised and only moved)."""
        if batch.dtype != torch.uint8:
            return batch.to(self.device, non_blocking=True)
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last
        return x.float().div_(255).sub_(self.mean).div_(self.std)
