"""``dogclf serve``: the real Starlette app under uvicorn on 127.0.0.1, a tiny real model, real HTTP."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import dogclf_command, jpeg, png, png_claiming
from PIL import Image

from dogclf import cli
from dogclf.artifact import save_model
from dogclf.classifier import Classifier, load_model
from dogclf.data.folder import ClassInfo
from dogclf.model import HeadConfig, build_model
from dogclf.serving import batcher as batcher_module
from dogclf.serving.batcher import BatchConfig
from dogclf.serving.codec import ACCEPTED_CONTENT_TYPES, Limits
from dogclf.serving.server import ConnectionLimits, ServeError, bind_socket, create_app, make_server

NUM_CLASSES = 6
BODY_LIMIT = 512 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def expected(classifier: Classifier, images: list[bytes], top_k: int = 5) -> list[dict[str, Any]]:
    return [r.to_dict() for r in classifier.classify(images, top_k=top_k)]


def assert_same_answer(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same labels, order and unknown flag; scores equal up to float noise of batched vs single forward passes."""
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]]
    assert [p["score"] for p in got["predictions"]] == pytest.approx(
        [p["score"] for p in want["predictions"]], abs=1e-5
    )
    assert got["unknown"] == want["unknown"]


@pytest.fixture
def model_dir(tmp_path: Path, tiny_spec: Any) -> Path:
    """A tiny model with decisive scores (the head is scaled up), saved as `dogclf train` would."""
    torch.manual_seed(0)
    net = build_model(tiny_spec, NUM_CLASSES, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(30)
    classes = [ClassInfo(folder=f"{i:03d}.Breed_{i}", name=f"Breed {i}") for i in range(NUM_CLASSES)]
    return save_model(net.eval(), tmp_path / "model", spec=tiny_spec, classes=classes, head=HeadConfig().to_dict())


@pytest.fixture
def classifier(model_dir: Path) -> Classifier:
    return load_model(model_dir)


class SlowNet(torch.nn.Module):
    """The real backbone, plus a fixed delay per forward pass (to fill the queue deterministically)."""

    def __init__(self, net: torch.nn.Module, seconds: float) -> None:
        super().__init__()
        self.net = net
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.net(x)


class GatedNet(torch.nn.Module):
    """The real backbone, held inside its forward pass until the test opens the gate (at most 20 s)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.entered = threading.Event()
        self.gate = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(timeout=20)
        return self.net(x)


@contextlib.contextmanager
def running(classifier: Classifier, **kwargs: Any) -> Iterator[tuple[int, Any]]:
    """Serves ``create_app(classifier, **kwargs)`` with uvicorn in a thread; yields ``(port, app)``; stops it."""
    kwargs.setdefault("limits", Limits(max_body_bytes=BODY_LIMIT))
    connections = kwargs.pop("connections", None)
    app = create_app(classifier, **kwargs)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, log_level="warning", access_log=False, connections=connections)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start in 20 s"
            time.sleep(0.01)
        yield sock.getsockname()[1], app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; returns status, headers (lower-case names) and the parsed JSON body (or the text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    if found.get("content-type", "").startswith("application/json"):
        return response.status, found, json.loads(raw)
    return response.status, found, raw.decode("utf-8", "replace")


def post_image(port: int, data: bytes, content_type: str = "image/jpeg") -> tuple[int, dict[str, str], Any]:
    return call(port, "POST", "/invocations", data, {"Content-Type": content_type})


def test_ping_info_page_and_unknown_routes(classifier: Classifier, model_dir: Path) -> None:
    with running(classifier, model_dir=model_dir) as (port, _):
        assert call(port, "GET", "/ping")[::2] == (200, {"status": "ok"})
        status, _, info = call(port, "GET", "/info")
        assert status == 200
        assert info["backbone"] == "tinynet"
        assert info["class_names"] == [f"Breed {i}" for i in range(NUM_CLASSES)]
        assert info["calibration"] == {"temperature": 1.0, "unknown_threshold": None}
        assert info["model_dir"] == str(model_dir)
        assert info["limits"]["max_body_bytes"] == BODY_LIMIT
        status, headers, page = call(port, "GET", "/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert '<input id="file" type="file"' in page
        assert "invocations" in page
        status, _, error = call(port, "GET", "/nope")
        assert status == 404
        assert "POST /invocations" in error["error"]["message"]
        status, headers, error = call(port, "GET", "/invocations")
        assert status == 405
        assert error["error"]["status"] == 405
        assert "POST" in headers["allow"]


def test_jpeg_png_and_json_batch_answers_equal_the_classifier(classifier: Classifier) -> None:
    images = [jpeg(1), png(2), jpeg(3, size=(300, 200))]
    with running(classifier) as (port, _):
        status, headers, answer = post_image(port, images[0])
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert_same_answer(answer, expected(classifier, images[:1])[0])
        assert len(answer["predictions"]) == 5  # the default top_k

        status, _, answer = post_image(port, images[1], "image/png")
        assert status == 200
        assert_same_answer(answer, expected(classifier, images[1:2])[0])

        body = json.dumps(
            {"images": [b64(images[0]), f"data:image/png;base64,{b64(images[1])}", b64(images[2])], "top_k": 3}
        )
        status, _, answer = call(port, "POST", "/invocations", body.encode(), {"Content-Type": "application/json"})
        assert status == 200
        want = expected(classifier, images, top_k=3)
        assert len(answer["results"]) == 3
        for got, one in zip(answer["results"], want, strict=True):
            assert_same_answer(got, one)


@pytest.mark.parametrize("image_format", ["WEBP", "BMP", "GIF", "TIFF"])
def test_every_supported_format_is_accepted_under_its_own_media_type(classifier: Classifier, image_format: str) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg(4))).save(buffer, format=image_format)
    body = buffer.getvalue()
    with running(classifier) as (port, _):
        status, _, answer = post_image(port, body, f"image/{image_format.lower()}")
    assert status == 200, answer
    assert_same_answer(answer, expected(classifier, [body])[0])


def test_concurrent_requests_share_forward_passes_and_bad_ones_do_not_disturb_them(classifier: Classifier) -> None:
    good = [jpeg(10 + i) for i in range(12)]
    want = expected(classifier, good)
    batching = BatchConfig(max_batch_size=32, max_wait_ms=300)
    with running(classifier, batching=batching) as (port, _):
        barrier = threading.Barrier(16)

        def send(k: int) -> tuple[int, Any]:
            barrier.wait()
            if k < len(good):
                status, _, answer = post_image(port, good[k])
            else:  # garbage sent into the same batching window
                status, _, answer = post_image(port, b"not an image at all " * 5)
            return status, answer

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, range(16)))
        for (status, answer), one in zip(answers, want, strict=False):
            assert status == 200, answer
            assert_same_answer(answer, one)
        for status, answer in answers[len(good) :]:
            assert status == 400
            assert "not an image" in answer["error"]["message"]
        stats = call(port, "GET", "/info")[2]["stats"]
    assert stats["images"] == len(good)
    assert stats["requests"] == len(good)
    assert stats["failed"] == 4
    assert stats["batches"] < len(good) / 2, stats  # 12 images in well under 12 forward passes
    assert stats["largest_batch"] >= 3, stats


def test_a_lone_request_is_not_held_for_company_that_is_not_coming(classifier: Classifier) -> None:
    """With nothing else decoding, the batch runs at once instead of waiting out max_wait_ms."""
    batching = BatchConfig(max_batch_size=32, max_wait_ms=3000)
    with running(classifier, batching=batching) as (port, _):
        post_image(port, jpeg(1))  # warm-up
        started = time.perf_counter()
        for seed in range(3):
            status, _, answer = post_image(port, jpeg(seed))
            assert status == 200, answer
        assert time.perf_counter() - started < 3.0  # the old batcher held each request for 3 s


def _bad_requests() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    image = jpeg(5)
    json_type = {"Content-Type": "application/json"}
    return [
        ("empty body", b"", {"Content-Type": "image/jpeg"}, 400, "Empty request body"),
        ("not an image", b"hello, this is text" * 10, {"Content-Type": "image/jpeg"}, 400, "not an image"),
        ("truncated JPEG", image[: len(image) // 2], {"Content-Type": "image/jpeg"}, 400, "truncated"),
        ("unsupported type", image, {"Content-Type": "text/plain"}, 415, ", ".join(ACCEPTED_CONTENT_TYPES)),
        ("no content type", image, {}, 415, "no Content-Type"),
        ("unacceptable Accept", image, {"Content-Type": "image/jpeg", "Accept": "text/html"}, 406, "application/json"),
        ("bomb over Pillow's limit", png_claiming(20_000, 20_000), {"Content-Type": "image/png"}, 413, "pixels"),
        ("over the pixel limit", png_claiming(9_000, 9_000), {"Content-Type": "image/png"}, 413, "Not decoded"),
        ("body over the limit", b"\xff" * (BODY_LIMIT + 1), {"Content-Type": "image/jpeg"}, 413, f"{BODY_LIMIT:,}"),
        ("malformed JSON", b'{"images": [', json_type, 400, "Malformed JSON"),
        ("deeply nested JSON", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", json_type, 400, "deeply"),
        ("JSON without images", b'{"image": "x"}', json_type, 400, '{"images"'),
        ("bad base64", json.dumps({"images": ["@@@"]}).encode(), json_type, 400, "base64"),
        (
            "bad image in a batch",
            json.dumps({"images": [b64(image), b64(b"nope")]}).encode(),
            json_type,
            400,
            "images[1]",
        ),
        ("bad top_k", json.dumps({"images": [b64(image)], "top_k": 0}).encode(), json_type, 400, "top_k"),
    ]


def test_every_bad_request_gets_a_clear_json_error_and_serving_goes_on(classifier: Classifier) -> None:
    probe = jpeg(99)
    want = expected(classifier, [probe])[0]
    with running(classifier) as (port, _):
        for name, body, headers, status, fragment in _bad_requests():
            got_status, got_headers, answer = call(port, "POST", "/invocations", body, headers)
            assert got_status == status, (name, answer)
            assert got_headers["content-type"] == "application/json", name
            assert answer["error"]["status"] == status, name
            assert fragment in answer["error"]["message"], (name, answer)
            ok_status, _, ok = post_image(port, probe)
            assert ok_status == 200, (name, ok)
            assert_same_answer(ok, want)


def _raw_exchange(port: int, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Sends a request head and body chunks on a raw socket, stopping as soon as an answer arrives; returns it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
                break  # the server answered before the body ended
            except BlockingIOError:
                pass
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_body_limits_are_enforced_without_reading_the_body(classifier: Classifier) -> None:
    probe = jpeg(7)
    want = expected(classifier, [probe])[0]
    with running(classifier) as (port, _):
        # A declared size over the limit is refused from the headers: the body is never sent.
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 900000000\r\n\r\n"
        answer = _raw_exchange(port, head, iter([]))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        # A chunked body (no length) is cut off once over the limit; the final chunk is never sent.
        head = (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"\xff" * 8192
        chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(4 * BODY_LIMIT // len(piece)))
        answer = _raw_exchange(port, head, chunks)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        status, _, ok = post_image(port, probe)
        assert status == 200
        assert_same_answer(ok, want)


def _answer_to(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends on ``sock`` until it closes the connection, and how many seconds that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    answer = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while data := sock.recv(65536):
            answer += data
    return answer, time.monotonic() - started


def _json_error(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return json.loads(body)["error"]


def test_slow_clients_are_cut_off_at_the_header_and_body_deadlines(classifier: Classifier) -> None:
    probe = jpeg(8)
    limits = ConnectionLimits(header_timeout_s=0.5, body_timeout_s=0.5)
    with running(classifier, connections=limits) as (port, _):
        # Headers that never end.
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            answer, seconds = _answer_to(slow)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert "headers did not arrive within 0.5 s" in _json_error(answer)["message"]
        assert seconds < 5

        # Headers sent one byte at a time: each byte is on time, the whole is not (the deadline is absolute).
        with socket.create_connection(("127.0.0.1", port)) as trickle:
            answer = b""
            for byte in b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n":
                try:
                    trickle.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.05)
            answer, _ = _answer_to(trickle)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]

        # A Content-Length larger than the body sent.
        with socket.create_connection(("127.0.0.1", port)) as short:
            head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
            short.sendall(head % (len(probe) + 100) + probe)
            answer, seconds = _answer_to(short)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert "Content-Length" in _json_error(answer)["message"]
        assert seconds < 5

        status, _, ok = post_image(port, probe)  # whole requests are still answered
        assert status == 200, ok


def test_connections_beyond_the_limit_get_503_at_once(classifier: Classifier) -> None:
    probe = jpeg(10)
    with running(classifier, connections=ConnectionLimits(max_connections=3)) as (port, _):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            time.sleep(0.2)  # accepted by the server
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                answer, seconds = _answer_to(extra)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert b"retry-after: 1" in answer.lower()
            assert "3 connections open" in _json_error(answer)["message"]
            assert seconds < 2  # answered at once, not after a timeout
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        status, _, ok = post_image(port, probe)
        assert status == 200, ok


def _big_png(side: int = 3000) -> bytes:
    """A PNG of ``side`` x ``side`` pixels (72 MB to decode at 3000: the large-photo lane) that compresses small."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class GatedDecodes:
    """Wraps the batcher's decoding: large images wait for the gate; records how many decode at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, large: bytes) -> None:
        self.real = batcher_module.prepared_image
        self.large = large
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = self.most = 0
        monkeypatch.setattr(batcher_module, "prepared_image", self)

    def __call__(self, classifier: Any, data: bytes, **kwargs: Any) -> Any:
        if data != self.large:
            return self.real(classifier, data, **kwargs)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.release()
        try:
            self.gate.wait(timeout=20)
            return self.real(classifier, data, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_small_images_are_answered_while_a_large_photo_decodes(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, probe = _big_png(), jpeg(12)
    decodes = GatedDecodes(monkeypatch, big)
    batching = BatchConfig(decode_workers=1)
    with running(classifier, batching=batching) as (port, app), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_image, port, big, "image/png")
        assert decodes.entered.acquire(timeout=20), "the large decode never started"

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # it must not wait for the large photo
        conn.request("POST", "/invocations", body=probe, headers={"Content-Type": "image/jpeg"})
        assert conn.getresponse().status == 200
        conn.close()
        assert not pending.done()

        decodes.gate.set()
        status, _, answer = pending.result(timeout=30)
        assert status == 200, answer
        assert app.state.batcher.stats.large_decodes == 1


def test_large_photos_decode_at_once_only_as_far_as_the_memory_budget_allows(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _big_png()
    decodes = GatedDecodes(monkeypatch, big)
    batching = BatchConfig(decode_workers=3, decode_memory_mb=100)  # three threads, room for one 72 MB decode
    with running(classifier, batching=batching) as (port, app), ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(post_image, port, big, "image/png") for _ in range(3)]
        assert decodes.entered.acquire(timeout=20)
        deadline = time.monotonic() + 20
        while app.state.batcher.decode_memory.waited < 2:  # the other two arrived, and wait for room
            assert time.monotonic() < deadline, "the other two large photos never arrived"
            time.sleep(0.01)
        time.sleep(0.2)
        assert decodes.running == 1
        decodes.gate.set()
        assert [f.result(timeout=30)[0] for f in pending] == [200, 200, 200]
        stats = app.state.batcher.stats
    assert decodes.most == 1
    assert stats.large_decodes == 3
    assert stats.decode_memory_waits == 2
    assert stats.decode_memory_peak_mb <= 100


def test_the_server_answers_while_a_forward_pass_runs(classifier: Classifier) -> None:
    probe = jpeg(9)
    want = expected(classifier, [probe])[0]
    gated = GatedNet(classifier.engine.backbone)
    classifier.engine.backbone = gated
    with running(classifier) as (port, _), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_image, port, probe)
        assert gated.entered.wait(timeout=20), "the forward pass never started"
        # The forward thread is blocked inside the network; the event loop must still answer.
        assert call(port, "GET", "/ping")[0] == 200
        assert call(port, "POST", "/invocations", b"junk", {"Content-Type": "image/png"})[0] == 400
        assert not pending.done()
        gated.gate.set()
        status, _, answer = pending.result(timeout=20)
    assert status == 200
    assert_same_answer(answer, want)


def test_full_queue_answers_503_with_retry_after(classifier: Classifier) -> None:
    probe = jpeg(8)
    want = expected(classifier, [probe])[0]
    classifier.engine.backbone = SlowNet(classifier.engine.backbone, 0.4)
    batching = BatchConfig(max_batch_size=1, max_wait_ms=0, queue_size=1, retry_after_s=2)
    with running(classifier, batching=batching) as (port, _):
        barrier = threading.Barrier(6)

        def send(_: int) -> tuple[int, dict[str, str], Any]:
            barrier.wait()
            return post_image(port, probe)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(6)))
        statuses = sorted(status for status, _, _ in answers)
        assert 200 in statuses
        assert 503 in statuses, statuses
        assert set(statuses) == {200, 503}
        for status, headers, answer in answers:
            if status == 503:
                assert headers["retry-after"] == "2"
                assert "busy" in answer["error"]["message"]
            else:
                assert_same_answer(answer, want)
        # A batch larger than the whole queue can never fit: 413, not 503.
        body = json.dumps({"images": [b64(probe)] * 2}).encode()
        status, _, answer = call(port, "POST", "/invocations", body, {"Content-Type": "application/json"})
        assert status == 413
        assert "queues at most 1" in answer["error"]["message"]
        status, _, answer = post_image(port, probe)
        assert status == 200
        stats = call(port, "GET", "/info")[2]["stats"]
    assert stats["rejected"] == statuses.count(503)


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"Cannot listen on 127\.0\.0\.1:{port}.*--port"):
            bind_socket("127.0.0.1", port)


@pytest.mark.slow
def test_cli_serve_and_predict_url(
    model_dir: Path, plugin_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(21))
    other = tmp_path / "dog2.png"
    other.write_bytes(png(22))
    junk = tmp_path / "notes.txt"
    junk.write_text("not a dog")
    command = [
        *dogclf_command(),
        "serve",
        "--model",
        str(model_dir),
        "--port",
        "0",
        "--no-access-log",
        "--device",
        "cpu",
        "--precision",
        "fp32",  # local `dogclf predict` runs in fp32; the answers must be equal
    ]
    process = subprocess.Popen(command, env=plugin_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = ""
        while "Press Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, f"dogclf serve exited early:\n{banner}{process.stdout.read()}"
            banner += line
        url = re.search(r"web page\s+(http://127\.0\.0\.1:\d+)/", banner).group(1)

        assert cli.main(["predict", "--model", str(model_dir), str(photo), str(other), "--json"]) == 0
        local = json.loads(capsys.readouterr().out)
        assert cli.main(["predict", "--url", url, str(photo), str(other), "--json"]) == 0
        remote = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in remote] == [str(photo), str(other)]
        for got, want in zip(remote, local, strict=True):
            assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
            assert [p["score"] for p in got["predictions"]] == pytest.approx(
                [p["score"] for p in want["predictions"]], abs=1e-5
            )

        # Text output as local predict prints it; one bad file is reported and the exit code says so.
        assert cli.main(["predict", "--url", url + "/", str(photo), str(junk), "--top-k", "2"]) == 1
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == str(photo)
        assert re.fullmatch(r"  [ \d]{2}\d\.\d%  Breed \d", lines[1])
        assert len(lines) == 5
        assert lines[3] == str(junk)
        assert (
            lines[4] == f"  error: {junk}: server answered HTTP 400: the bytes are not an image "
            "(JPEG, PNG, WebP, BMP, GIF or TIFF expected)."
        )

        # SIGTERM while an upload has stalled (Content-Length more than was sent): the upload gets 503 within the
        # shutdown grace, the server drains and exits with status 0, without a traceback.
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n")
            stalled.sendall(b"Content-Length: 100000\r\n\r\n" + jpeg(23)[:100])
            time.sleep(0.3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=30)
            seconds = time.monotonic() - started
            answer, _ = _answer_to(stalled)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out
    assert seconds < 10, out
    assert "Traceback" not in out, out
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert "stopped: 3 requests, 3 images in 3 batches" in out  # the junk file failed before the queue


def test_predict_url_says_when_no_server_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(1))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens here
    assert cli.main(["predict", "--url", f"http://127.0.0.1:{port}", str(photo)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot reach a dogclf server at http://127.0.0.1:{port}/invocations" in err
    assert "dogclf serve --model" in err
    assert cli.main(["predict", "--url", "ftp://example.org", str(photo)]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def test_bf16_serving_precision_agrees_with_fp32(model_dir: Path) -> None:
    """`dogclf serve --precision auto` runs bf16 + channels-last where the CPU has it: same ranking, close scores."""
    images = [jpeg(40 + i) for i in range(6)]
    exact = load_model(model_dir, precision="fp32").classify(images, top_k=3)
    fast_classifier = load_model(model_dir, precision="bf16")
    assert fast_classifier.precision == "bf16"
    fast = fast_classifier.classify(images, top_k=3)
    for a, b in zip(exact, fast, strict=True):
        assert a.predictions[0].label == b.predictions[0].label
        for pa, pb in zip(a.predictions, b.predictions, strict=True):
            assert abs(pa.score - pb.score) < 0.03
    with pytest.raises(ValueError, match="fp16"):
        load_model(model_dir, precision="fp16")


def test_listening_socket_is_tcp_with_nodelay() -> None:
    """asyncio sets TCP_NODELAY on accepted sockets only when their proto says TCP; without it every answer stalls
    40 ms on Nagle + delayed ACK (measured: 70 ms vs 27 ms per request with one client)."""
    sock = bind_socket("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_the_forward_pass_runs_with_the_configured_torch_threads(classifier: Classifier) -> None:
    """The decoding threads must not leave the forward thread with fewer torch threads than the budget gives it."""
    seen: list[int] = []
    classifier.engine.backbone.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    batching = BatchConfig(decode_workers=1, forward_workers=1, forward_threads=2)
    with running(classifier, batching=batching) as (port, _):
        for seed in range(3):
            assert post_image(port, jpeg(seed))[0] == 200
        info = call(port, "GET", "/info")[2]
    assert seen == [2, 2, 2]
    assert info["stats"]["forward_threads"] == 2
    assert info["threads"] == {
        "cores": info["threads"]["cores"],
        "decode_workers": 1,
        "forward_workers": 1,
        "forward_threads": 2,
    }
    assert info["engine"]["precision"] == classifier.precision
    assert info["stats"]["decode_seconds"] > 0
    assert info["stats"]["forward_seconds"] > 0


def test_the_default_serving_budget_keeps_a_core_for_the_event_loop_on_small_machines() -> None:
    for cores in (1, 2):
        budget = BatchConfig().budget(cores=cores)
        assert (budget.forward_workers, budget.forward_threads) == (1, 1)
    wide = BatchConfig().budget(cores=16)
    assert (wide.cores, wide.forward_workers, wide.forward_threads) == (16, 2, 7)
    told = BatchConfig(forward_workers=2).budget(cores=2)
    assert (told.forward_workers, told.forward_threads) == (2, 1)  # what the user asks for is kept


def test_instances_requests_get_predictions_answers(classifier: Classifier) -> None:
    """The TF Serving / KServe v1 / Vertex AI convention: {"instances": [{"b64": ...}]} -> {"predictions": [...]}."""
    images = [jpeg(30), png(31)]
    want = expected(classifier, images, top_k=2)
    with running(classifier) as (port, _):
        body = json.dumps({"instances": [{"b64": b64(images[0])}, {"b64": b64(images[1])}], "parameters": {"top_k": 2}})
        status, _, answer = call(port, "POST", "/invocations", body.encode(), {"Content-Type": "application/json"})
        assert status == 200
        assert list(answer) == ["predictions"]
        for got, wanted in zip(answer["predictions"], want, strict=True):
            assert_same_answer(got, wanted)
        bad = json.dumps({"instances": [{"b64": b64(images[0])}, {"bytes": "x"}]}).encode()
        status, _, answer = call(port, "POST", "/invocations", bad, {"Content-Type": "application/json"})
        assert status == 400
        assert answer["error"]["message"] == 'instances[1] must be {"b64": "<base64 image>"}; its keys are: bytes.'
        both = json.dumps({"images": [b64(images[0])], "instances": [{"b64": b64(images[0])}]}).encode()
        status, _, answer = call(port, "POST", "/invocations", both, {"Content-Type": "application/json"})
        assert status == 400
        assert "not both" in answer["error"]["message"]


def test_a_request_that_is_not_answered_in_time_gets_504(classifier: Classifier) -> None:
    gated = GatedNet(classifier.engine.backbone)
    classifier.engine.backbone = gated
    batching = BatchConfig(request_timeout_s=0.5)
    with running(classifier, batching=batching) as (port, _):
        started = time.monotonic()
        status, _, answer = post_image(port, jpeg(5))
        assert status == 504
        assert time.monotonic() - started < 10
        assert "not answered within 0.5 s" in answer["error"]["message"]
        gated.gate.set()
        assert post_image(port, jpeg(6))[0] == 200
        assert call(port, "GET", "/info")[2]["stats"]["timed_out"] == 1


def test_ping_fails_and_requests_get_503_once_the_batching_worker_died(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(classifier) as (port, app):
        assert call(port, "GET", "/ping")[0] == 200
        batcher = app.state.batcher

        async def broken() -> list[Any]:
            raise RuntimeError("worker bug")

        monkeypatch.setattr(batcher, "_next_batch", broken)
        # The worker is already waiting for this batch; it answers it, then dies fetching the next one.
        assert post_image(port, jpeg(7))[0] == 200
        deadline = time.monotonic() + 10
        while call(port, "GET", "/ping")[0] == 200:
            assert time.monotonic() < deadline, "/ping still answers 200 after the worker died"
            time.sleep(0.05)
        status, _, ping = call(port, "GET", "/ping")
        assert status == 503
        assert ping["status"] == "unhealthy"
        status, headers, answer = post_image(port, jpeg(8))
        assert status == 503
        assert "batching worker has stopped (RuntimeError: worker bug); restart" in answer["error"]["message"]
        assert headers["retry-after"] == "5"
