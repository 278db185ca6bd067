"""Request bodies in, JSON answers out: the wire format shared by the SageMaker handlers and ``dogclf serve``.

Accepted request content types:

* ``image/jpeg``, ``image/png``, ``image/webp``, ``image/bmp``, ``image/gif``, ``image/tiff``, ``application/x-image``,
  ``application/octet-stream``: the body is one image file (its bytes decide the format, whatever the type says).
* ``application/json``: ``{"images": ["<base64>", ...], "top_k": 5}`` (a batch; ``data:`` URLs are accepted too),
  or the convention of TF Serving, KServe v1 and Vertex AI, ``{"instances": [{"b64": "<base64>"}, ...]}`` (``top_k``
  at the top level or in ``"parameters"``).
* ``application/x-npy``: pixels, one ``(H, W, 3)`` image or an ``(N, H, W, 3)`` batch (:mod:`dogclf.serving.npy`,
  what the SageMaker SDK's default ``PyTorchPredictor`` sends).

The answer is ``application/json``. For one image::

    {"predictions": [{"label": "Beagle", "score": 0.91, "index": 3}, ...], "unknown": false}

For an ``images`` batch, ``{"results": [<one answer per image>, ...]}`` in request order; for an ``instances``
batch, ``{"predictions": [<one answer per image>, ...]}``.

Every problem with a request raises :class:`RequestError`, which carries the HTTP status to answer with and a
message that says what was wrong and what would work. Nothing here unpickles anything; images are decoded by Pillow
only after their header has been checked against the pixel limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from dogclf._json import dumps
from dogclf.data.images import IMAGE_MEDIA_TYPES
from dogclf.errors import DogclfError, UnreadableImageError
from dogclf.serving.npy import NPY_CONTENT_TYPE, decode_npy

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "IMAGE_CONTENT_TYPES",
    "JSON_CONTENT_TYPE",
    "DecodedRequest",
    "Limits",
    "RequestError",
    "check_accept",
    "check_content_type",
    "decode_request",
    "encode_error",
    "encode_results",
    "image_header",
    "prepared_image",
    "media_type",
    "open_image",
]

JSON_CONTENT_TYPE = "application/json"
IMAGE_CONTENT_TYPES = (*dict.fromkeys(IMAGE_MEDIA_TYPES.values()), "application/x-image", "application/octet-stream")
ACCEPTED_CONTENT_TYPES = (*IMAGE_CONTENT_TYPES, JSON_CONTENT_TYPE, NPY_CONTENT_TYPE)


class RequestError(DogclfError, ValueError):
    """A request that cannot be answered, with the HTTP status that says why.

    Attributes:
        status: 400 (bad body), 406 (Accept), 413 (too large), 415 (content type), 503 (busy).
        headers: Extra response headers (``Retry-After`` for 503).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    Attributes:
        max_body_bytes: Largest request body (413 above it).
        max_pixels: Largest image, width x height, checked from the header before decoding (413 above it).
        max_images: Most images in one JSON batch (413 above it).
        max_top_k: Largest ``top_k`` a JSON request may ask for.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_images: int = 64
    max_top_k: int = 1000


@dataclass(frozen=True)
class DecodedRequest:
    """A request's images (still encoded, checked for size) and options.

    Attributes:
        images: The image files' bytes, in request order.
        batch: Whether the request was a JSON batch (answer with ``{batch_key: [...]}``).
        top_k: The ``top_k`` the request asked for, or ``None`` for the server's default.
        batch_key: The batch's JSON key: ``"images"`` (answered under ``"results"``) or ``"instances"`` (answered
            under ``"predictions"``).
    """

    images: list[bytes]
    batch: bool
    top_k: int | None = None
    batch_key: str = "images"

    @property
    def labels(self) -> list[str]:
        """How error messages name each image: ``image`` alone, ``images[i]`` / ``instances[i]`` in a batch."""
        return [f"{self.batch_key}[{i}]" for i in range(len(self.images))] if self.batch else ["image"]

    @property
    def answer_key(self) -> str | None:
        """The key of the JSON answer's list: ``"results"``, ``"predictions"``, or ``None`` for one image."""
        if not self.batch:
            return None
        return "predictions" if self.batch_key == "instances" else "results"


def media_type(header: str | None) -> str:
    """The bare, lower-case media type of a Content-Type/Accept value (``"image/jpeg; q=1"`` -> ``"image/jpeg"``)."""
    return (header or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """The bare media type of a request's Content-Type, if it is one of :data:`ACCEPTED_CONTENT_TYPES`.

    Raises:
        RequestError: 415, listing the accepted types.
    """
    kind = media_type(content_type)
    if kind not in ACCEPTED_CONTENT_TYPES:
        shown = repr(content_type) if content_type else "no Content-Type"
        raise RequestError(415, f"Unsupported content type {shown}; send one of: {', '.join(ACCEPTED_CONTENT_TYPES)}.")
    return kind


def check_accept(accept: str | None, offers: Sequence[str] = (JSON_CONTENT_TYPE,)) -> str:
    """Picks the response type for an ``Accept`` header among ``offers`` (the first for none or a wildcard).

    Raises:
        RequestError: 406, when the client accepts nothing this server produces.
    """
    if not accept or not accept.strip():
        return offers[0]
    for part in accept.split(","):
        kind = media_type(part)
        params = [p.strip().replace(" ", "") for p in part.split(";")[1:]]
        if "q=0" in params or "q=0.0" in params:
            continue
        if kind in offers:
            return kind
        if kind in ("application/*", "*/*", "*"):
            return offers[0]
    only = f"{offers[0]} only" if len(offers) == 1 else " or ".join(offers)
    raise RequestError(406, f"Cannot produce {accept!r}: answers are {only}; send Accept: {offers[0]}.")


def _b64(item: Any, name: str) -> bytes:
    if not isinstance(item, str):
        raise RequestError(400, f"{name} must be a base64 string, got {type(item).__name__}.")
    text = item.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise RequestError(400, f"{name} is a data: URL without ';base64'.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{name} is not valid base64: {exc}.") from exc
    if not data:
        raise RequestError(400, f"{name} is empty.")
    return data


def _instance(item: Any, position: int) -> bytes:
    """One ``instances`` entry: ``{"b64": "..."}`` (TF Serving / KServe v1 / Vertex AI), or a bare base64 string."""
    name = f"instances[{position}]"
    if isinstance(item, dict):
        if "b64" not in item:
            keys = ", ".join(sorted(map(str, item))) or "none"
            raise RequestError(400, f'{name} must be {{"b64": "<base64 image>"}}; its keys are: {keys}.')
        return _b64(item["b64"], f"{name}.b64")
    return _b64(item, name)


def _batch_items(payload: Any) -> tuple[str, list[Any], Any]:
    """``(key, items, top_k)`` of a JSON request: an ``images`` or an ``instances`` batch."""
    usage = 'A JSON request must be {"images": ["<base64 image>", ...]} or {"instances": [{"b64": "<base64>"}, ...]}.'
    if not isinstance(payload, dict):
        raise RequestError(400, usage)
    keys = [key for key in ("images", "instances") if key in payload]
    if len(keys) != 1:
        raise RequestError(400, usage + (" Send one of the two, not both." if keys else ""))
    key = keys[0]
    if not isinstance(payload[key], list):
        raise RequestError(400, f'"{key}" must be a list. ' + usage)
    top_k = payload.get("top_k")
    parameters = payload.get("parameters")
    if top_k is None and isinstance(parameters, dict):
        top_k = parameters.get("top_k")
    return key, payload[key], top_k


def decode_request(body: bytes | str | None, content_type: str | None, *, limits: Limits = Limits()) -> DecodedRequest:
    """Checks a request body and pulls out its images.

    Args:
        body: The raw body (the SageMaker toolkit passes ``str`` for JSON).
        content_type: The Content-Type header (parameters are ignored).
        limits: Size limits.

    Returns:
        The images and options.

    Raises:
        RequestError: 400 empty or malformed body, 413 too large, 415 unsupported content type.
    """
    kind = check_content_type(content_type)
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    if not raw:
        raise RequestError(400, "Empty request body: send the bytes of a JPEG or PNG image, or a JSON batch.")
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, f"Request body is {len(raw):,} bytes; the limit is {limits.max_body_bytes:,} bytes.")
    if kind == NPY_CONTENT_TYPE:
        images, batch = decode_npy(raw, max_images=limits.max_images, max_pixels=limits.max_pixels)
        return DecodedRequest(images=images, batch=batch)
    if kind != JSON_CONTENT_TYPE:
        return DecodedRequest(images=[raw], batch=False)
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"Malformed JSON: {exc}.") from exc
    except RecursionError:  # '[[[[...' nested deeper than Python's parser recurses
        raise RequestError(400, 'Malformed JSON: nested too deeply; send a flat {"images": [...]} object.') from None
    key, items, top_k = _batch_items(payload)
    if not items:
        raise RequestError(400, f'"{key}" is empty: send at least one base64 image.')
    if len(items) > limits.max_images:
        raise RequestError(413, f"{len(items)} images in one request; the limit is {limits.max_images}.")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limits.max_top_k
    ):
        raise RequestError(400, f'"top_k" must be an integer from 1 to {limits.max_top_k}, got {top_k!r}.')
    if key == "instances":
        images = [_instance(item, i) for i, item in enumerate(items)]
    else:
        images = [_b64(item, f"images[{i}]") for i, item in enumerate(items)]
    return DecodedRequest(images=images, batch=True, top_k=top_k, batch_key=key)


def open_image(
    data: bytes, *, min_size: int | None = None, max_pixels: int = Limits.max_pixels, label: str = "image"
) -> Image.Image:
    """Decodes one request image to RGB, refusing decompression bombs before decoding any pixel.

    Args:
        data: The image file's bytes.
        min_size: The model's resize size (enables JPEG draft mode for large photos).
        max_pixels: Largest width x height accepted.
        label: How to name the image in messages (``"images[2]"``).

    Raises:
        RequestError: 400 for bytes that are not an image or a truncated one, 413 for too many pixels.
    """
    from dogclf.data.images import load_rgb

    image_header(data, max_pixels=max_pixels, label=label)
    try:
        return load_rgb(data, min_size=min_size)
    except UnreadableImageError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise RequestError(400, f"{label}: cannot decode the image: {reason} (the bytes may be cut short).") from exc


def image_header(
    data: bytes, *, max_pixels: int = Limits.max_pixels, label: str = "image"
) -> tuple[int, int, str | None]:
    """``(width, height, Pillow format)`` of an image file, from its header alone (no pixel is decoded).

    Raises:
        RequestError: 400 for bytes that are not an image of a supported format, 413 for too many pixels.
    """
    from dogclf.data.images import IMAGE_FORMATS, SUPPORTED_FORMATS_TEXT

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as header:  # reads the header only
            width, height = header.size
            image_format = header.format
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"{label}: too many pixels to decode ({exc}).") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if "truncated" in str(exc).lower():
            raise RequestError(400, f"{label}: truncated image (the file ends inside its header).") from exc
        raise RequestError(400, f"{label}: the bytes are not an image ({SUPPORTED_FORMATS_TEXT} expected).") from exc
    if width * height > max_pixels:
        raise RequestError(
            413, f"{label}: {width}x{height} is {width * height:,} pixels; the limit is {max_pixels:,}. Not decoded."
        )
    return width, height, image_format


def prepared_image(classifier: Any, data: bytes, *, label: str = "image", max_pixels: int = Limits.max_pixels) -> Any:
    """One request image as the engine's input: a ``(H, W, 3)`` uint8 array.

    :func:`open_image` at the model's resize size, then resized and cropped by the engine's preparer (no torch, so
    it runs in any thread).

    Raises:
        RequestError: As :func:`open_image`.
    """
    size = classifier.preprocessing.resize_size
    return classifier.engine.prepare.from_pil(open_image(data, min_size=size, max_pixels=max_pixels, label=label))


def encode_results(results: Sequence[Any], *, batch: bool, key: str | None = "results") -> str:
    """JSON for a list of :class:`~dogclf.classifier.ImageResult`: one object, or ``{key: [...]}`` for a batch.

    The key is ``"results"`` for an ``images`` request and ``"predictions"`` for an ``instances`` one.
    """
    answers = [r.to_dict() for r in results]
    return dumps({key or "results": answers} if batch else answers[0])  # a NaN score would be invalid JSON


def encode_error(error: RequestError) -> str:
    """JSON body of an error answer: ``{"error": {"status": 400, "message": "..."}}``."""
    return json.dumps({"error": {"status": error.status, "message": error.message}})
