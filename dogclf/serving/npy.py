"""``application/x-npy`` bodies: what the SageMaker SDK's default ``PyTorchPredictor`` sends and expects back.

The SDK's ``NumpySerializer`` sends ``numpy.save`` of whatever ``predictor.predict(...)`` is given, and its
``NumpyDeserializer`` asks for ``application/x-npy`` back. So a request may be one image as pixels, ``(H, W, 3)``
(also ``(H, W)`` grey or ``(H, W, 4)`` with alpha, channels last, values 0-255, e.g. ``numpy.asarray(PIL image)``),
or a batch ``(N, H, W, 3)``; the answer is the calibrated class probabilities in the model's class order, ``(C,)``
for one image or ``(N, C)`` for a batch (``config.json``'s ``class_names`` name them). Nothing is unpickled.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["NPY_CONTENT_TYPE", "decode_npy", "encode_probabilities"]

NPY_CONTENT_TYPE = "application/x-npy"
_USAGE = "send numpy.save() of one (H, W, 3) image with values 0-255 or a batch (N, H, W, 3)"


def _array(raw: bytes) -> Any:
    import numpy as np

    from dogclf.serving.codec import RequestError

    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(400, f"Malformed .npy body ({exc}); {_USAGE}.") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif":
        raise RequestError(400, f"The .npy body must hold a numeric array; {_USAGE}.")
    return array


def decode_npy(raw: bytes, *, max_images: int, max_pixels: int) -> tuple[list[bytes], bool]:
    """The images of an ``.npy`` body as PNG files (lossless), and whether it was a batch.

    Raises:
        RequestError: 400 for a malformed body, a shape that is not an image or values outside 0-255; 413 for too
            many images or pixels.
    """
    import numpy as np
    from PIL import Image

    from dogclf.serving.codec import RequestError

    array = _array(raw)
    batch = array.ndim == 4
    images = array if batch else array[None]
    if images.ndim == 3:  # grey (N, H, W)
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or 0 in images.shape:
        raise RequestError(400, f"An array of shape {tuple(array.shape)} is not an image; {_USAGE}.")
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images in one request; the limit is {max_images}.")
    height, width = images.shape[1:3]
    if height * width > max_pixels:
        raise RequestError(413, f"{width}x{height} is {width * height:,} pixels; the limit is {max_pixels:,}.")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 255:
        raise RequestError(400, f"Pixel values must be finite numbers from 0 to 255; {_USAGE}.")
    pixels = np.rint(images).astype(np.uint8) if images.dtype.kind == "f" else images.astype(np.uint8)
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", compress_level=0)
        files.append(buffer.getvalue())
    return files, batch


def encode_probabilities(probabilities: Any, *, batch: bool) -> bytes:
    """``numpy.save`` of the float32 probabilities: ``(N, C)`` for a batch, ``(C,)`` for one image."""
    import numpy as np

    array = np.asarray(probabilities, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array if batch else array[0], allow_pickle=False)
    return buffer.getvalue()
