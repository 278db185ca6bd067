"""The SageMaker handlers, served in-process through the real ``sagemaker-pytorch-inference`` toolkit.

The toolkit's ``HandlerService`` is what the AWS PyTorch inference container runs inside TorchServe; here it gets a
small stand-in for TorchServe's request context (the same attributes and methods ``ts.context.Context`` has) and the
bodies as TorchServe hands them over (``bytearray``, as ``decode_input_request=false`` in the container's config).
"""

from __future__ import annotations

import base64
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import jpeg, png, png_claiming

from dogclf.artifact import save_model
from dogclf.classifier import Classifier, load_model
from dogclf.data.folder import ClassInfo
from dogclf.model import HeadConfig, build_model
from dogclf.serving import handlers
from dogclf.serving.codec import ACCEPTED_CONTENT_TYPES, RequestError
from dogclf.serving.package import INFERENCE_SOURCE

handler_service = pytest.importorskip(
    "sagemaker_pytorch_serving_container.handler_service", reason="the SageMaker toolkit (dogclf[dev]) is not installed"
)
from sagemaker_inference.errors import BaseInferenceToolkitError  # noqa: E402  (after the importorskip above)

NUM_CLASSES = 7


class FakeRequest:
    """The parts of TorchServe's ``RequestProcessor`` the toolkit uses."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status = 200
        self.phrase: str | None = None
        self.response_headers: dict[str, str] = {}

    def get_request_properties(self) -> dict[str, str]:
        return self.headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self.status, self.phrase = code, reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self.response_headers[key] = value


class FakeContext:
    """The parts of TorchServe's ``Context`` the toolkit uses."""

    def __init__(self, model_dir: Path) -> None:
        self.model_name = "model"
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.request_processor = [FakeRequest({})]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].add_response_property("content-type", value)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def model_dir(tmp_path: Path, tiny_spec: Any) -> Path:
    """A tiny model with decisive (spread-out) scores, and the ``code/inference.py`` that ``dogclf package`` writes."""
    torch.manual_seed(0)
    net = build_model(tiny_spec, NUM_CLASSES, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(30)
    classes = [ClassInfo(folder=f"{i:03d}.Breed_{i}", name=f"Breed {i}") for i in range(NUM_CLASSES)]
    root = save_model(net.eval(), tmp_path / "model", spec=tiny_spec, classes=classes, head=HeadConfig().to_dict())
    (root / "code").mkdir()
    (root / "code" / "inference.py").write_text(INFERENCE_SOURCE, encoding="utf-8")
    return root


@pytest.fixture
def served(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Sends one request through the toolkit's ``HandlerService``; returns ``(status, body, content_type, phrase)``."""
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    monkeypatch.delenv(handlers.TOP_K_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", "")  # the toolkit prepends model_dir/code to it; restored after the test
    monkeypatch.syspath_prepend(str(model_dir / "code"))  # as the container's PYTHONPATH does
    sys.modules.pop("inference", None)
    context = FakeContext(model_dir)
    service = handler_service.HandlerService()
    service.initialize(context)

    def send(body: bytes | str, content_type: str | None = "image/jpeg", accept: str | None = None) -> Any:
        headers = {} if content_type is None else {"Content-Type": content_type}
        if accept is not None:
            headers["Accept"] = accept
        context.request_processor = [FakeRequest(headers)]
        raw = bytearray(body.encode() if isinstance(body, str) else body)
        [answer] = service.handle([{"body": raw}], context)
        request = context.request_processor[0]
        return request.status, answer, request.response_headers.get("content-type"), request.phrase

    yield send
    sys.modules.pop("inference", None)


@pytest.fixture
def reference(model_dir: Path, tiny_spec: Any) -> Classifier:
    """The same model loaded in-process: what every served answer must equal."""
    return load_model(model_dir)


def expected(classifier: Classifier, images: list[bytes], top_k: int = 5) -> list[dict[str, Any]]:
    return [r.to_dict() for r in classifier.classify(images, top_k=top_k)]


def assert_same(answer: dict[str, Any], wanted: dict[str, Any]) -> None:
    assert answer["unknown"] == wanted["unknown"]
    assert [(p["label"], p["index"]) for p in answer["predictions"]] == [
        (p["label"], p["index"]) for p in wanted["predictions"]
    ]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx([p["score"] for p in wanted["predictions"]])


def error_of(body: str) -> dict[str, Any]:
    """Our JSON error object: the first line of the toolkit's error body (its traceback follows)."""
    return json.loads(body.split("\n", 1)[0])["error"]


def test_handlers_have_the_arities_the_toolkit_counts() -> None:
    arities = {
        name: list(inspect.signature(getattr(handlers, name)).parameters)
        for name in ("model_fn", "input_fn", "predict_fn", "output_fn")
    }
    assert arities == {
        "model_fn": ["model_dir"],
        "input_fn": ["request_body", "content_type"],
        "predict_fn": ["data", "model"],
        "output_fn": ["prediction", "accept"],
    }
    namespace: dict[str, Any] = {}
    exec(INFERENCE_SOURCE, namespace)
    assert {name: namespace[name] for name in arities} == {name: getattr(handlers, name) for name in arities}
    assert "transform_fn" not in namespace  # the toolkit refuses transform_fn next to the other three


@pytest.mark.parametrize(
    ("content_type", "make"),
    [
        ("image/jpeg", jpeg),
        ("image/png", png),
        ("application/x-image", jpeg),
        ("application/octet-stream", png),
        ("image/jpeg; charset=binary", jpeg),
    ],
)
def test_one_image_answers_like_the_classifier(
    served: Any, reference: Classifier, content_type: str, make: Any
) -> None:
    image = make(3)
    status, body, answer_type, _ = served(image, content_type)
    assert (status, answer_type) == (200, "application/json")
    answer = json.loads(body)
    assert set(answer) == {"predictions", "unknown"}
    assert len(answer["predictions"]) == 5  # the default top_k
    assert_same(answer, expected(reference, [image])[0])


def test_json_batch_answers_in_order(served: Any, reference: Classifier) -> None:
    images = [jpeg(10), png(11), jpeg(12, size=(200, 150))]
    request = {"images": [b64(images[0]), f"data:image/png;base64,{b64(images[1])}", b64(images[2])], "top_k": 3}
    status, body, answer_type, _ = served(json.dumps(request), "application/json", accept="application/json")
    assert (status, answer_type) == (200, "application/json")
    results = json.loads(body)["results"]
    wanted = expected(reference, images, top_k=3)
    assert [len(r["predictions"]) for r in results] == [3, 3, 3]
    for answer, want in zip(results, wanted, strict=True):
        assert_same(answer, want)
    # Different images, different answers: the order is really checked.
    assert len({json.dumps(r["predictions"]) for r in results}) == 3


def test_top_k_from_request_and_from_the_environment(
    served: Any, reference: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = jpeg(5)
    status, body, _, _ = served(json.dumps({"images": [b64(image)], "top_k": 1}), "application/json")
    assert status == 200
    assert_same(json.loads(body)["results"][0], expected(reference, [image], top_k=1)[0])
    status, body, _, _ = served(json.dumps({"images": [b64(image)], "top_k": 50}), "application/json")
    assert len(json.loads(body)["results"][0]["predictions"]) == NUM_CLASSES  # capped at the class count
    monkeypatch.setenv(handlers.TOP_K_ENV, "2")  # read per request, after the model was loaded
    status, body, _, _ = served(image, "image/jpeg")
    assert (status, len(json.loads(body)["predictions"])) == (200, 2)


def truncated() -> bytes:
    data = jpeg(7, size=(120, 90))
    return data[: len(data) // 2]


BAD_REQUESTS = [
    pytest.param(b"", "image/jpeg", None, 400, "Empty request body", id="empty"),
    pytest.param(b"hello, I am not a picture", "image/jpeg", None, 400, "not an image", id="not-an-image"),
    pytest.param(truncated(), "image/jpeg", None, 400, "truncated", id="truncated"),
    pytest.param(jpeg(1), "text/plain", None, 415, "image/jpeg, image/png", id="unsupported-type"),
    pytest.param(jpeg(1), None, None, 415, "no Content-Type", id="no-content-type"),
    pytest.param(jpeg(1), "image/jpeg", "text/csv", 406, "application/json or application/x-npy", id="accept-csv"),
    pytest.param(png_claiming(8500, 8500), "image/png", None, 413, "Not decoded", id="pixel-limit"),
    pytest.param(png_claiming(30000, 30000), "image/png", None, 413, "too many pixels", id="decompression-bomb"),
    pytest.param("{not json", "application/json", None, 400, "Malformed JSON", id="malformed-json"),
    pytest.param('{"pictures": []}', "application/json", None, 400, '{"images"', id="json-without-images"),
    pytest.param('{"images": ["***"]}', "application/json", None, 400, "not valid base64", id="bad-base64"),
    pytest.param('{"images": ["aGVsbG8="]}', "application/json", None, 400, "images[0]: the bytes", id="b64-not-image"),
    pytest.param('{"images": ["aGVsbG8="], "top_k": 0}', "application/json", None, 400, "top_k", id="top-k-zero"),
    pytest.param(json.dumps({"images": ["aGVsbG8="] * 65}), "application/json", None, 413, "limit is 64", id="batch"),
]


@pytest.mark.parametrize(("body", "content_type", "accept", "status", "says"), BAD_REQUESTS)
def test_bad_requests_get_their_status_and_a_clear_message(
    served: Any, reference: Classifier, body: Any, content_type: str | None, accept: str | None, status: int, says: str
) -> None:
    good = jpeg(2)
    before = served(good, "image/jpeg")
    got_status, answer, _, phrase = served(body, content_type, accept)
    assert got_status == status
    error = error_of(answer)
    assert error["status"] == status
    assert says in error["message"]
    assert phrase == {400: "Bad Request", 406: "Not Acceptable", 413: "Request Entity Too Large"}.get(
        status, "Unsupported Media Type"
    )
    after = served(good, "image/jpeg")
    assert before[0] == after[0] == 200
    assert json.loads(after[1]) == json.loads(before[1])
    assert_same(json.loads(after[1]), expected(reference, [good])[0])


def test_unsupported_type_lists_every_accepted_type(served: Any) -> None:
    status, body, _, _ = served(jpeg(1), "image/svg+xml")
    assert status == 415
    for content_type in ACCEPTED_CONTENT_TYPES:
        assert content_type in error_of(body)["message"]


def test_json_that_is_not_utf8_is_a_500_from_the_toolkit(served: Any) -> None:
    # Documented limitation: the toolkit decodes application/json bodies before input_fn sees them.
    status, body, _, _ = served(b'{"images": ["\xff"]}', "application/json")
    assert status == 500
    assert "UnicodeDecodeError" in body


def test_handlers_without_the_toolkit_raise_request_error() -> None:
    handlers._toolkit_error_type.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in ("sagemaker_inference", "sagemaker_inference.errors"):
                patch.setitem(sys.modules, name, None)  # importing it now raises ImportError, as when not installed
            with pytest.raises(RequestError) as caught:
                handlers.input_fn(b"", "image/jpeg")
        assert caught.value.status == 400
    finally:
        handlers._toolkit_error_type.cache_clear()
    with pytest.raises(BaseInferenceToolkitError) as toolkit_caught:
        handlers.input_fn(b"x", "text/html")
    assert toolkit_caught.value.status_code == 415
    assert toolkit_caught.value.request_error.status == 415  # type: ignore[attr-defined]


def test_model_fn_refuses_a_bad_top_k_at_start_up(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(handlers.TOP_K_ENV, "five")
    with pytest.raises(ValueError, match="DOGCLF_TOP_K='five' must be an integer"):
        handlers.model_fn(str(model_dir))


def test_the_sdk_default_pytorch_predictor_numpy_round_trip(served: Any, reference: Classifier) -> None:
    # PyTorchPredictor's defaults: NumpySerializer in, NumpyDeserializer (Accept: application/x-npy) out.
    import io

    import numpy as np
    from PIL import Image
    from sagemaker.core.deserializers import NumpyDeserializer
    from sagemaker.core.serializers import NumpySerializer

    serializer, deserializer = NumpySerializer(), NumpyDeserializer()
    photos = [jpeg(3, size=(90, 70)), jpeg(4, size=(90, 70))]
    pixels = [np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")) for photo in photos]
    wanted = reference.scores(reference.preprocess([Image.fromarray(p) for p in pixels])).probabilities.numpy()

    status, body, content_type, _ = served(
        serializer.serialize(pixels[0]), serializer.CONTENT_TYPE, deserializer.ACCEPT[0]
    )
    assert (status, content_type) == (200, "application/x-npy")
    one = deserializer.deserialize(io.BytesIO(body), content_type)
    assert one.shape == (NUM_CLASSES,)
    assert one == pytest.approx(wanted[0], abs=1e-5)

    status, body, content_type, _ = served(
        serializer.serialize(np.stack(pixels)), "application/x-npy", "application/x-npy"
    )
    assert status == 200
    assert deserializer.deserialize(io.BytesIO(body), content_type) == pytest.approx(wanted, abs=1e-5)

    # The same pixels with a JSON answer give what predict gives for the photo's pixels.
    status, body, _, _ = served(serializer.serialize(pixels[1]), "application/x-npy", "application/json")
    assert status == 200
    assert_same(json.loads(body), reference.classify([Image.fromarray(pixels[1])])[0].to_dict())

    for bad, says in [
        (b"not npy", "Malformed .npy body"),
        (serializer.serialize(np.zeros((4, 4, 7))), "is not an image"),
        (serializer.serialize(np.full((8, 8, 3), 300.0)), "Pixel values must be finite numbers from 0 to 255"),
    ]:
        status, body, _, _ = served(bad, "application/x-npy", "application/x-npy")
        assert status == 400
        assert says in error_of(body)["message"]
