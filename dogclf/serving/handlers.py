"""The four SageMaker inference handlers: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

The AWS PyTorch inference container (through ``sagemaker-pytorch-inference``) imports ``code/inference.py`` of a
model archive and calls these by name. ``dogclf package`` writes an ``inference.py`` that re-exports them.

The toolkit decides whether to pass its request context by counting parameters, so each handler has exactly the
arity the toolkit expects without a context; ``tests/serving/test_sagemaker_handlers.py`` checks that.

Where the work happens: ``input_fn`` has no model argument, so it only checks the request (content type, size,
JSON and base64) with :func:`~dogclf.serving.codec.decode_request` and returns the still-encoded images.
``predict_fn`` has the model: it checks each image's header against the pixel limit, decodes it with the model's
resize size (JPEG draft mode), resizes and crops it with the engine's preparer, and runs the request's images through
the model's engine and post-processing, exactly as ``dogclf serve`` and ``dogclf predict`` do.
``output_fn`` checks ``Accept`` and writes the JSON answer.

A bad request raises :class:`~dogclf.serving.codec.RequestError`. When the toolkit is importable it is re-raised as
the toolkit's own error type with the same HTTP status (400, 406, 413, 415), so the client gets that status with our
JSON error object as the first line of the body (the toolkit appends its traceback after it); outside the toolkit
the :class:`RequestError` itself propagates.
"""

from __future__ import annotations

import contextlib
import functools
import http
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dogclf.serving.codec import (
    JSON_CONTENT_TYPE,
    DecodedRequest,
    Limits,
    RequestError,
    check_accept,
    decode_request,
    encode_error,
    encode_results,
    prepared_image,
)
from dogclf.serving.npy import NPY_CONTENT_TYPE, encode_probabilities

__all__ = [
    "DEFAULT_TOP_K",
    "PRECISION_ENV",
    "TOP_K_ENV",
    "Answer",
    "default_top_k",
    "input_fn",
    "model_fn",
    "output_fn",
    "predict_fn",
]

DEFAULT_TOP_K = 5
TOP_K_ENV = "DOGCLF_TOP_K"
PRECISION_ENV = "DOGCLF_PRECISION"
_LIMITS = Limits()


@dataclass(frozen=True)
class Answer:
    """What ``predict_fn`` hands to ``output_fn``.

    Attributes:
        results: One :class:`~dogclf.classifier.ImageResult` per image, in request order.
        batch: Whether the request was a JSON batch.
        key: The batch answer's key: ``"results"`` (an ``images`` request) or ``"predictions"`` (``instances``).
        probabilities: ``(N, C)`` calibrated class probabilities, for an ``application/x-npy`` answer.
    """

    results: list[Any]
    batch: bool
    key: str | None = "results"
    probabilities: Any = None


def default_top_k(environ: Mapping[str, str] = os.environ) -> int:
    """The ``top_k`` used when a request names none: ``DOGCLF_TOP_K`` if set, else 5.

    Raises:
        ValueError: If ``DOGCLF_TOP_K`` is not an integer from 1 to the request limit.
    """
    raw = environ.get(TOP_K_ENV, "").strip()
    if not raw:
        return DEFAULT_TOP_K
    if not raw.isdigit() or not 1 <= int(raw) <= _LIMITS.max_top_k:
        raise ValueError(f"{TOP_K_ENV}={raw!r} must be an integer from 1 to {_LIMITS.max_top_k} (or unset for 5).")
    return int(raw)


@functools.cache
def _toolkit_error_type() -> type[Exception] | None:
    """The toolkit's error class carrying our status, or ``None`` when ``sagemaker_inference`` is not installed."""
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:
        return None

    class SageMakerRequestError(BaseInferenceToolkitError):
        """A :class:`RequestError` as the toolkit reports it: its status, a JSON body line, the HTTP phrase."""

        def __init__(self, error: RequestError) -> None:
            super().__init__(error.status, encode_error(error), http.HTTPStatus(error.status).phrase)
            self.request_error = error

    SageMakerRequestError.__qualname__ = SageMakerRequestError.__name__
    return SageMakerRequestError


@contextlib.contextmanager
def _answer_errors() -> Iterator[None]:
    """Turns a :class:`RequestError` into the toolkit's error type (same status), when the toolkit is present."""
    try:
        yield
    except RequestError as exc:
        toolkit_error = _toolkit_error_type()
        if toolkit_error is None:
            raise
        # ``from None``: the toolkit puts the formatted traceback in the body after our JSON line; keep it short.
        raise toolkit_error(exc) from None


def model_fn(model_dir: str) -> Any:
    """Loads the model directory (``model.safetensors`` + ``config.json``) on CUDA if available, else CPU.

    The precision is ``$DOGCLF_PRECISION`` if set (``fp32``, ``bf16``, ``fp16``, ``auto``), else the precision the
    model was calibrated in, run natively, as ``dogclf serve`` and ``dogclf predict`` run it; the engine is
    ``$DOGCLF_ENGINE`` if set, else OpenVINO on an x86 CPU where it is installed, else torch. The torch threads are
    the container's (TorchServe sets ``OMP_NUM_THREADS`` per worker).

    Args:
        model_dir: The unpacked archive root (``/opt/ml/model`` in the container).

    Returns:
        A :class:`~dogclf.classifier.Classifier`.

    Raises:
        ModelDirError: Missing or mismatched files, or a backbone that is not installed (or vendored).
        ValueError: A malformed ``DOGCLF_TOP_K``, reported at start-up rather than on the first request.
    """
    from dogclf.classifier import load_model

    default_top_k()
    return load_model(model_dir, device="auto", precision=os.environ.get(PRECISION_ENV, "").strip() or None)


def input_fn(request_body: bytes | str, content_type: str) -> DecodedRequest:
    """Checks a request and extracts its (still encoded) images; the model decodes them in ``predict_fn``.

    Args:
        request_body: The body (the toolkit passes ``str`` for ``application/json``, else bytes).
        content_type: The request's Content-Type.

    Returns:
        The images' bytes and the request options.

    Raises:
        RequestError: 400, 413 or 415 (as the toolkit's error type under the toolkit).
    """
    with _answer_errors():
        return decode_request(request_body, content_type, limits=_LIMITS)


def predict_fn(data: DecodedRequest, model: Any) -> Answer:
    """Decodes, preprocesses and classifies the request's images through the model's engine.

    Args:
        data: What ``input_fn`` returned.
        model: What ``model_fn`` returned.

    Returns:
        One result per image, in request order.

    Raises:
        RequestError: 400 for bytes that are not a decodable image, 413 for too many pixels (checked from the
            header, before decoding).
    """
    with _answer_errors():
        top_k = data.top_k or default_top_k()
        images = [
            prepared_image(model, item, label=label, max_pixels=_LIMITS.max_pixels)
            for item, label in zip(data.images, data.labels, strict=True)
        ]
    output = model.forward(images)
    results = model.answer(output, top_k=top_k)
    probabilities = model.post.probabilities(output.logits).numpy()
    return Answer(results=results, batch=data.batch, key=data.answer_key, probabilities=probabilities)


def output_fn(prediction: Answer, accept: str) -> tuple[str | bytes, str]:
    """Writes the answer: JSON, or the probabilities as ``.npy`` for ``Accept: application/x-npy``.

    Args:
        prediction: What ``predict_fn`` returned.
        accept: The request's Accept header (the toolkit puts ``application/json`` for a missing one or ``*/*``).

    Returns:
        ``(body, "application/json")``: the ImageResult object for one image, ``{"results": [...]}`` for an
        ``images`` batch, ``{"predictions": [...]}`` for an ``instances`` batch; or ``(npy bytes,
        "application/x-npy")``: the ``(C,)`` probabilities of one image or the ``(N, C)`` of a batch.

    Raises:
        RequestError: 406 when neither JSON nor NPY is acceptable.
    """
    with _answer_errors():
        kind = check_accept(accept, offers=(JSON_CONTENT_TYPE, NPY_CONTENT_TYPE))
    if kind == NPY_CONTENT_TYPE:
        return encode_probabilities(prediction.probabilities, batch=prediction.batch), NPY_CONTENT_TYPE
    return encode_results(prediction.results, batch=prediction.batch, key=prediction.key), JSON_CONTENT_TYPE
