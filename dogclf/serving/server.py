"""``dogclf serve``: a local HTTP server with the SageMaker container contract, a web page and dynamic batching.

Endpoints:

* ``GET /ping``: 200 once the model is loaded and the batcher runs (503 while stopping, or once the batching worker
  has died).
* ``POST /invocations``: one image (``image/jpeg``, ``image/png``, ...) or a JSON batch; JSON answers, see
  :mod:`dogclf.serving.codec`. Concurrent requests share forward passes (:mod:`dogclf.serving.batcher`).
* ``GET /``: a web page to try the model with a photo.
* ``GET /info``: the model (backbone, classes, calibration), the engine (precision and why, device), the thread
  budget (decode threads, forward workers and their torch threads), the limits, the batching knobs and counters
  (including decode and forward seconds).

Every bad request gets a JSON error ``{"error": {"status": ..., "message": ...}}`` and the server goes on serving.
Starlette and uvicorn are imported by the functions that need them, so ``import dogclf`` stays light.
"""

from __future__ import annotations

import contextlib
import http
import importlib.resources
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from typing import Any

from dogclf.artifact.config import config_section
from dogclf.errors import DogclfError
from dogclf.serving.batcher import BatchConfig, Batcher
from dogclf.serving.codec import (
    JSON_CONTENT_TYPE,
    Limits,
    RequestError,
    check_accept,
    check_content_type,
    decode_request,
    encode_error,
    encode_results,
)
from dogclf.serving.connections import ConnectionLimits, protocol_class

__all__ = ["DEFAULT_PORT", "ConnectionLimits", "ServeError", "bind_socket", "create_app", "make_server", "serve"]

DEFAULT_PORT = 8080
_LOG = logging.getLogger("dogclf.serve")


class ServeError(DogclfError, OSError):
    """The server cannot start (for example, the port is taken)."""


def _error_response(error: RequestError) -> Any:
    from starlette.responses import Response

    return Response(encode_error(error), status_code=error.status, media_type=JSON_CONTENT_TYPE, headers=error.headers)


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refusing (413) a declared or actual size over ``limit`` without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, f"Content-Length {declared!r} is not a number of bytes.")
        if int(declared) > limit:
            raise RequestError(413, f"Request body is {int(declared):,} bytes; the limit is {limit:,} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body has no Content-Length: stop reading once it is over
            raise RequestError(413, f"Request body is over the limit of {limit:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _model_info(classifier: Any, model_dir: str | None) -> dict[str, Any]:
    metrics = config_section(classifier.model_config or classifier.config, "metrics")
    return {
        "model_dir": model_dir,
        "backbone": classifier.spec.name,
        "num_classes": len(classifier.class_names),
        "class_names": classifier.class_names,
        "calibration": {"temperature": classifier.temperature, "unknown_threshold": classifier.unknown_threshold},
        "input_size": classifier.preprocessing.input_size,
        "device": str(classifier.device),
        "engine": classifier.info(),
        "metrics": (metrics and metrics.final) or {},  # the last epoch's, as training recorded them
    }


def _page() -> bytes:
    return importlib.resources.files("dogclf.serving").joinpath("static/index.html").read_bytes()


def create_app(
    classifier: Any,
    *,
    batching: BatchConfig | None = None,
    limits: Limits | None = None,
    top_k: int = 5,
    model_dir: str | os.PathLike[str] | None = None,
    on_started: Callable[[], None] | None = None,
) -> Any:
    """Builds the ASGI app serving one classifier.

    Args:
        classifier: A loaded :class:`~dogclf.classifier.Classifier`.
        batching: Batch size, wait and queue knobs (default :class:`BatchConfig`).
        limits: Body, pixel and batch limits (default :class:`~dogclf.serving.codec.Limits`).
        top_k: Breeds per answer when a request names none.
        model_dir: Shown by ``/info``.
        on_started: Called once the batcher runs (after the model is ready for requests).

    Returns:
        A Starlette application; its ``state.batcher`` holds the :class:`~dogclf.serving.batcher.Batcher`.
    """
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    batching = batching or BatchConfig()
    limits = limits or Limits()
    if not isinstance(top_k, int) or not 1 <= top_k <= limits.max_top_k:
        raise ValueError(f"top_k must be an integer from 1 to {limits.max_top_k}, got {top_k!r}.")
    batcher = Batcher(classifier, config=batching, limits=limits)
    info = _model_info(classifier, None if model_dir is None else str(model_dir))
    page = _page()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await batcher.stop()
            stats = batcher.stats
            _LOG.info("stopped: %d requests, %d images in %d batches", stats.requests, stats.images, stats.batches)

    async def ping(request: Request) -> Response:
        if not batcher.healthy:
            return JSONResponse({"status": "unhealthy", "error": batcher.unavailable_error().message}, status_code=503)
        if not batcher.running:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def invocations(request: Request) -> Response:
        try:
            check_accept(request.headers.get("accept"))
            content_type = request.headers.get("content-type")
            check_content_type(content_type)  # 415 before reading a body of a type it cannot use
            body = await _read_body(request, limits.max_body_bytes)
            decoded = decode_request(body, content_type, limits=limits)
            results = await batcher.classify(decoded.images, top_k=decoded.top_k or top_k, labels=decoded.labels)
        except RequestError as exc:
            return _error_response(exc)
        except ClientDisconnect:  # the client went away while sending: nobody to answer
            return Response(status_code=400)
        except Exception as exc:  # a failed forward pass: answer 500 and keep serving
            _LOG.exception("request failed")
            error = RequestError(500, f"Internal error while classifying: {type(exc).__name__}: {exc}")
            return _error_response(error)
        body = encode_results(results, batch=decoded.batch, key=decoded.answer_key)
        return Response(body, media_type=JSON_CONTENT_TYPE)

    async def show_info(request: Request) -> Response:
        payload = {
            **info,
            "top_k": top_k,
            "limits": asdict(limits),
            "batching": asdict(batching),
            "threads": batcher.budget.to_dict(),
            "stats": batcher.stats.to_dict(),
        }
        return Response(json.dumps(payload), media_type=JSON_CONTENT_TYPE)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def route_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"{request.method} {request.url.path}: {http.HTTPStatus(status).phrase}. "
        message += "Endpoints: GET /, GET /ping, GET /info, POST /invocations."
        return _error_response(RequestError(status, message, dict(getattr(exc, "headers", None) or {})))

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/info", show_info, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        exception_handlers={404: route_error, 405: route_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0 picks a free one).

    Raises:
        ServeError: When the address cannot be bound, with what to try instead.
    """
    if not 0 <= port <= 65535:
        raise ServeError(f"Port {port} is out of range: use 1 to 65535 (or 0 for any free port).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and without
    # it the response's headers and body meet Nagle + delayed ACK: a 40 ms stall on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Check --host; for a port in use, pick another "
            "--port (or --port 0 for any free one) or stop the program using it."
        ) from exc
    sock.set_inheritable(True)
    return sock


def make_server(
    app: Any, *, log_level: str = "info", access_log: bool = True, connections: ConnectionLimits | None = None
) -> Any:
    """A ``uvicorn.Server`` for ``app`` (h11, no websockets); run it with ``.run(sockets=[bind_socket(...)])``.

    It finishes requests in flight on SIGINT/SIGTERM (up to 30 s; a body still arriving gets 2 s, then 503), then
    stops the batcher after its queue is empty. Slow clients are cut off and connections bounded by ``connections``
    (default :class:`~dogclf.serving.connections.ConnectionLimits`).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        http=protocol_class(connections or ConnectionLimits()),
        ws="none",
        # No dictConfig of the process's logging: uvicorn's default config closes every handler already installed
        # (a library user's, or absl's, which OpenVINO's converter imports); its loggers propagate to the root logger.
        log_config=None,
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    return uvicorn.Server(config)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def serve(
    model_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    batching: BatchConfig | None = None,
    limits: Limits | None = None,
    top_k: int = 5,
    device: str = "cpu",
    precision: str | None = None,
    engine: str = "auto",
    access_log: bool = True,
    connections: ConnectionLimits | None = None,
) -> None:
    """Loads a model directory and serves it until SIGINT/SIGTERM (blocking).

    After SIGTERM (how Docker, Kubernetes and SageMaker stop a container) the requests in flight are answered and the
    function returns normally, so ``dogclf serve`` exits with status 0; SIGINT (Ctrl-C) ends in ``KeyboardInterrupt``.

    Args:
        model_dir: A directory written by ``dogclf train``.
        host: Address to listen on (``0.0.0.0`` in a container).
        port: TCP port (0: any free one; the URL is printed).
        batching: Batching knobs (default :class:`BatchConfig`).
        limits: Request limits (default :class:`~dogclf.serving.codec.Limits`).
        top_k: Breeds per answer when a request names none.
        device: ``cpu``, ``auto``, ``cuda`` or ``cuda:N``.
        precision: ``None`` (the precision the model was calibrated in), ``fp32``, ``bf16``, ``fp16`` or ``auto``
            (see :class:`~dogclf.classifier.Classifier`).
        engine: ``auto`` (OpenVINO on x86 CPUs where installed, else torch), ``torch``, ``openvino`` or
            ``onnxruntime`` (see :func:`~dogclf.classifier.load_model`).
        access_log: Log one line per request.
        connections: Header and body deadlines, and the most open connections (default
            :class:`~dogclf.serving.connections.ConnectionLimits`).

    Raises:
        ModelDirError: The model directory cannot be loaded.
        ServeError: The address cannot be bound.
    """
    from dogclf.classifier import load_model

    batching = batching or BatchConfig()
    sock = bind_socket(host, port)  # first: a taken port fails before the model loads
    with sock:
        classifier = load_model(model_dir, device=device, precision=precision, engine=engine)
        url = _url(sock)

        def announce() -> None:
            print(
                f"dogclf serve: {classifier.spec.name} model with {len(classifier.class_names)} classes from "
                f"{os.fspath(model_dir)} on {classifier.device}\n"
                f"  web page     {url}\n  predictions  POST {url}invocations\n"
                f"  engine       {classifier.engine.name}, {classifier.precision_choice.describe()}\n"
                f"  threads      {classifier.engine.fit_budget(batching.budget()).describe()}\n"
                f"  batching     up to {batching.max_batch_size} images, {batching.max_wait_ms:g} ms wait, "
                f"queue {batching.queue_size}, timeout {batching.request_timeout_s:g} s\nPress Ctrl-C to stop.",
                flush=True,
            )

        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
        app = create_app(
            classifier, batching=batching, limits=limits, top_k=top_k, model_dir=model_dir, on_started=announce
        )
        server = make_server(app, access_log=access_log, connections=connections)
        with _drain_on_sigterm(server):
            server.run(sockets=[sock])


@contextlib.contextmanager
def _drain_on_sigterm(server: Any) -> Iterator[None]:
    """While serving, SIGTERM asks ``server`` to drain and stop; it no longer kills the process afterwards.

    uvicorn handles the signal while it runs, then raises it again against the handler it found: the default one
    would kill the process (exit status -15) after a clean drain. This handler is the one it finds.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
