"""Dynamic batching: many clients' images, one forward pass.

Each request's images are decoded, resized and cropped in a small thread pool (Pillow releases the GIL; no torch
runs there), then wait in a bounded queue. The batching worker takes up to ``max_batch_size`` images at a time,
waiting at most ``max_wait_ms`` after the oldest one arrived for more to join, and hands the batch to a forward
thread (torch releases the GIL), so the event loop keeps accepting and answering requests while the model works.
Each image's header is read first on the event loop (no pixels); photos that would hold over 32 MiB while decoding
go to a pool of their own, as many at once as ``decode_memory_mb`` allows (:mod:`dogclf.serving.decode_memory`), so
small images never wait behind them.
With ``forward_workers`` above 1, that many batches run at once, each on its own share of the cores.

The thread budget is set on purpose (:class:`~dogclf.inference.threads.ThreadBudget`): decoding threads, forward
workers, and the torch thread count of each pass, which the forward thread sets itself before every pass (torch
keeps the count per thread, and a new thread inherits whatever another one set last).
``stats.forward_threads`` reports the count the last forward pass actually ran with.

Admission is decided once per request, before any decoding: when the images already waiting plus the new ones would
exceed ``queue_size``, the request is refused with 503 and ``Retry-After``. A request whose image cannot be decoded
fails alone with 400/413; it never enters the queue, so it cannot disturb the batch it would have joined. A request
not answered within ``request_timeout_s`` gets 504; if the batching worker itself dies, every waiting request gets
503 and :attr:`Batcher.healthy` turns false (``/ping`` answers 503).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dogclf.inference.threads import ThreadBudget, available_cores
from dogclf.serving.codec import Limits, RequestError, image_header, prepared_image
from dogclf.serving.decode_memory import LARGE_DECODE_BYTES, DecodeMemory, decode_bytes

__all__ = ["BatchConfig", "BatchStats", "Batcher", "default_decode_workers"]

_LOG = logging.getLogger("dogclf.serve")


def default_decode_workers(cpu_count: int | None = None) -> int:
    """Decoding threads for a machine: those of :meth:`ThreadBudget.plan` (a quarter of the cores, 1 to 4)."""
    return ThreadBudget.plan(cores=cpu_count).decode_workers


@dataclass(frozen=True)
class BatchConfig:
    """How requests are gathered into forward passes.

    Attributes:
        max_batch_size: Most images in one forward pass.
        max_wait_ms: How long the oldest waiting image may wait for others to join its batch.
        queue_size: Most images waiting (decoding or queued) before requests are refused with 503.
        decode_workers: Threads that decode and resize images (``None``: :meth:`ThreadBudget.plan`).
        forward_workers: Forward passes that may run at once, each in its own thread on its own batch (``None``:
            1 on up to two cores, else :meth:`ThreadBudget.plan`'s 2; see :meth:`budget`).
        forward_threads: torch threads of each forward pass (``None``: the cores not used for decoding, shared
            among the forward workers).
        retry_after_s: The ``Retry-After`` seconds sent with a 503.
        request_timeout_s: A request not answered by then gets 504 (0: no limit).
        decode_memory_mb: MiB that large photos (over 32 MiB to decode) may hold while decoding at once; they are
            decoded in a lane of their own, so small images never wait behind them (see
            :mod:`dogclf.serving.decode_memory`).
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256
    decode_workers: int | None = None
    forward_workers: int | None = None
    forward_threads: int | None = None
    retry_after_s: int = 1
    request_timeout_s: float = 30.0
    decode_memory_mb: float = 1024.0

    def __post_init__(self) -> None:
        checks = [
            ("max_batch_size", self.max_batch_size, self.max_batch_size >= 1, "an integer >= 1"),
            ("max_wait_ms", self.max_wait_ms, self.max_wait_ms >= 0, "a number >= 0"),
            ("queue_size", self.queue_size, self.queue_size >= 1, "an integer >= 1"),
            ("retry_after_s", self.retry_after_s, self.retry_after_s >= 0, "an integer >= 0"),
            ("request_timeout_s", self.request_timeout_s, self.request_timeout_s >= 0, "a number >= 0"),
            ("decode_memory_mb", self.decode_memory_mb, self.decode_memory_mb > 0, "a number > 0"),
        ]
        if self.decode_workers is not None:
            checks.append(("decode_workers", self.decode_workers, self.decode_workers >= 1, "an integer >= 1"))
        if self.forward_workers is not None:
            checks.append(("forward_workers", self.forward_workers, self.forward_workers >= 1, "an integer >= 1"))
        if self.forward_threads is not None:
            checks.append(("forward_threads", self.forward_threads, self.forward_threads >= 1, "an integer >= 1"))
        for name, value, ok, wanted in checks:
            if not ok:
                flag = "--" + name.replace("_", "-").removesuffix("-s")
                raise ValueError(f"{name} ({flag} of dogclf serve) must be {wanted}, got {value!r}.")

    def budget(self, cores: int | None = None) -> ThreadBudget:
        """The thread budget these settings ask for on this machine (or on ``cores`` cores).

        On one or two cores, unless told otherwise, the server runs **one** forward worker of one torch thread and
        leaves the other core to decoding, the event loop and the HTTP connections: forward workers are threads of
        one process, and on two cores a second worker, or a second torch thread, competes with them for the GIL
        and the cores. Measured with ``bench/serve_speed.py`` on 2 cores (docs/benchmarks.md, run 3): 35.7 / 52.0 /
        72.8 / 74.7 requests/s at 1 / 4 / 16 / 64 clients against 22.0 / 38.6 / 64.0 / 80.0 with two workers.
        """
        cores = available_cores() if cores is None else cores
        workers, threads = self.forward_workers, self.forward_threads
        if workers is None and threads is None and cores <= 2:
            workers, threads = 1, 1
        return ThreadBudget.plan(
            cores=cores,
            decode_workers=self.decode_workers,
            forward_workers=workers,
            forward_threads=threads,
        )


@dataclass
class BatchStats:
    """Counters since the batcher started (read them for monitoring or tests).

    Attributes:
        requests: Requests answered with predictions.
        images: Images that went through the network.
        batches: Forward passes run.
        largest_batch: Most images in one forward pass.
        rejected: Requests refused because the queue was full.
        failed: Requests that failed (bad images, a failed forward pass, a timeout).
        timed_out: Requests answered 504 because they were not done within the request timeout.
        decode_seconds: Thread time spent decoding and resizing images.
        forward_seconds: Thread time spent in forward passes (post-processing included).
        forward_threads: torch threads the last forward pass ran with (0 before the first).
        large_decodes: Images decoded in the large-photo lane.
        decode_memory_waits: Large decodes that waited for the decoding memory budget.
        decode_memory_peak_mb: The most decoding memory (estimated) large photos held at once.
    """

    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0
    failed: int = 0
    timed_out: int = 0
    decode_seconds: float = 0.0
    forward_seconds: float = 0.0
    forward_threads: int = 0
    large_decodes: int = 0
    decode_memory_waits: int = 0
    decode_memory_peak_mb: float = 0.0

    def to_dict(self) -> dict[str, int | float]:
        """The counters as a plain dict."""
        return dict(vars(self))


@dataclass
class _Item:
    image: Any
    top_k: int
    future: asyncio.Future[Any]
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers images from concurrent requests into batched forward passes of one classifier.

    Use it from one event loop: ``await start()``, then ``await classify(...)`` from any number of request handlers,
    then ``await stop()``.

    Args:
        classifier: A loaded :class:`~dogclf.classifier.Classifier` (its ``engine`` and ``answer``).
        config: Batching knobs (default :class:`BatchConfig`).
        limits: Request limits; the pixel limit is checked before decoding (default ``Limits()``).

    Attributes:
        stats: The :class:`BatchStats` counters.
        decode_memory: The :class:`~dogclf.serving.decode_memory.DecodeMemory` budget of large photos.
    """

    def __init__(self, classifier: Any, *, config: BatchConfig | None = None, limits: Limits | None = None) -> None:
        self.classifier = classifier
        self.config = config or BatchConfig()
        self.limits = limits or Limits()
        self.budget = classifier.engine.fit_budget(self.config.budget())
        self.stats = BatchStats()
        self._items: collections.deque[_Item] = collections.deque()
        self._waiting = 0  # images admitted and not yet taken into a batch (decoding or queued)
        self._wakeup: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._died: BaseException | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._large_pool: ThreadPoolExecutor | None = None
        self.decode_memory = DecodeMemory(int(self.config.decode_memory_mb * 1024 * 1024))
        self._forward_pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the time counters are added to from several threads

    @property
    def running(self) -> bool:
        """Whether the batcher accepts work."""
        return self._worker is not None and not self._closing and self._died is None

    @property
    def healthy(self) -> bool:
        """Whether the batching worker is alive (false once it died, or before start)."""
        return self._worker is not None and not self._worker.done() and self._died is None

    async def start(self) -> None:
        """Starts the thread pools and the batching worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("Batcher.start() was already called.")
        budget = self.budget
        self.classifier.engine.use_threads(budget)
        self._decode_pool = ThreadPoolExecutor(
            max_workers=max(1, budget.decode_workers), thread_name_prefix="dogclf-decode"
        )
        self._large_pool = ThreadPoolExecutor(
            max_workers=max(1, budget.decode_workers), thread_name_prefix="dogclf-decode-large"
        )
        self._forward_pool = ThreadPoolExecutor(
            max_workers=budget.forward_workers,
            thread_name_prefix="dogclf-forward",
            initializer=_set_torch_threads,
            initargs=(budget.forward_threads,),
        )
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="dogclf-batcher")
        self._worker.add_done_callback(self._worker_done)

    async def stop(self) -> None:
        """Refuses new work, finishes every image already queued, then stops the worker and the threads."""
        self._closing = True
        self._wake()
        if self._worker is not None:
            await asyncio.wait([self._worker])
        for pool in (self._decode_pool, self._large_pool, self._forward_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    async def classify(self, images: Sequence[bytes], *, top_k: int, labels: Sequence[str] | None = None) -> list[Any]:
        """Classifies one request's images, batched with whatever other requests are waiting.

        Args:
            images: The encoded image files.
            top_k: Breeds per answer.
            labels: How to name each image in error messages (default ``"image"`` / ``"images[i]"``).

        Returns:
            One :class:`~dogclf.classifier.ImageResult` per image, in order.

        Raises:
            RequestError: 503 when the queue is full, the server is stopping or its worker died; 504 when the
                request was not answered within ``request_timeout_s``; 413 when the request alone holds more images
                than the queue; 400/413 for an image that cannot be decoded.
        """
        n = len(images)
        if labels is None:
            labels = ["image"] if n == 1 else [f"images[{i}]" for i in range(n)]
        self._admit(n)
        self._waiting += n
        timeout = self.config.request_timeout_s or None
        try:
            return await asyncio.wait_for(self._classify(images, top_k, labels), timeout)
        except asyncio.TimeoutError:
            self.stats.timed_out += 1
            self.stats.failed += 1
            raise RequestError(
                504,
                f"The request was not answered within {self.config.request_timeout_s:g} s (the server is overloaded "
                "or its model is stuck); retry later, or raise --request-timeout.",
            ) from None

    async def _classify(self, images: Sequence[bytes], top_k: int, labels: Sequence[str]) -> list[Any]:
        loop = asyncio.get_running_loop()
        n = len(images)
        try:
            prepared = await asyncio.gather(
                *(self._decode(data, label) for data, label in zip(images, labels, strict=True))
            )
        except BaseException:
            self._waiting -= n
            self.stats.failed += 1
            self._wake()  # a stopping worker waits for decodes in flight
            raise
        if self._died is not None:
            self._waiting -= n
            raise self.unavailable_error()
        items = [_Item(image, top_k, loop.create_future()) for image in prepared]
        self._items.extend(items)
        self._wake()
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:  # a timed-out request's images are skipped if they are still queued
                item.future.cancel()
            self.stats.failed += 1
            raise
        self.stats.requests += 1
        return list(results)

    def _admit(self, n: int) -> None:
        retry = {"Retry-After": str(self.config.retry_after_s)}
        if self._died is not None:
            raise self.unavailable_error()
        if not self.running:
            raise RequestError(503, "The server is shutting down; retry on another instance or later.", retry)
        if n > self.config.queue_size:
            raise RequestError(
                413, f"{n} images in one request; this server queues at most {self.config.queue_size}: send fewer."
            )
        if self._waiting + n > self.config.queue_size:
            self.stats.rejected += 1
            raise RequestError(
                503,
                f"The server is busy ({self._waiting} images waiting, queue size {self.config.queue_size}); "
                f"retry after {self.config.retry_after_s} s.",
                retry,
            )

    def unavailable_error(self) -> RequestError:
        """The 503 answered once the batching worker has died (with its reason)."""
        reason = f"{type(self._died).__name__}: {self._died}" if self._died is not None else "stopped"
        return RequestError(
            503, f"The server's batching worker has stopped ({reason}); restart the server.", {"Retry-After": "5"}
        )

    async def _decode(self, data: bytes, label: str) -> Any:
        """Decodes one image in a thread: small ones at once, large ones in their lane once the memory budget fits."""
        width, height, image_format = image_header(data, max_pixels=self.limits.max_pixels, label=label)
        cost = decode_bytes(width, height, image_format, self.classifier.preprocessing.resize_size)
        loop = asyncio.get_running_loop()
        if cost <= LARGE_DECODE_BYTES:
            return await loop.run_in_executor(self._decode_pool, self._prepare, data, label)
        if self._large_pool is None:
            raise RuntimeError("Batcher.start() was not called.")
        held = await self.decode_memory.acquire(cost)
        self.stats.large_decodes += 1
        self.stats.decode_memory_waits = self.decode_memory.waited
        self.stats.decode_memory_peak_mb = round(self.decode_memory.peak / 2**20, 1)
        running = self._large_pool.submit(self._prepare, data, label)
        # Released when the thread is done, not when the request is: a timed-out request's decode still holds memory.
        running.add_done_callback(lambda _: loop.call_soon_threadsafe(self.decode_memory.release, held))
        return await asyncio.wrap_future(running)

    def _prepare(self, data: bytes, label: str) -> Any:
        """Decodes (header checked first), resizes and crops one image; runs in the decoding pool."""
        started = time.perf_counter()
        try:
            return prepared_image(self.classifier, data, label=label, max_pixels=self.limits.max_pixels)
        finally:
            with self._lock:
                self.stats.decode_seconds += time.perf_counter() - started

    def _forward(self, items: list[_Item], threads: int) -> list[Any]:
        """One forward pass for a batch and its answers; runs in a forward thread, with ``threads`` torch threads."""
        import torch

        started = time.perf_counter()
        _set_torch_threads(threads)
        self.stats.forward_threads = torch.get_num_threads()
        output = self.classifier.forward([item.image for item in items])
        answers = self.classifier.answer(output, top_k=[item.top_k for item in items])
        with self._lock:
            self.stats.forward_seconds += time.perf_counter() - started
        return answers

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, timeout: float | None) -> None:
        """Waits until an item arrives or the batcher closes (or ``timeout`` seconds pass)."""
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait([self._wakeup], timeout=timeout)
        finally:
            self._wakeup = None

    async def _next_batch(self) -> list[_Item]:
        """The next batch: up to ``max_batch_size`` items, once full or once the oldest has waited ``max_wait_ms``.

        It goes at once when no other image is being decoded: a lone client never waits for company that is not coming.
        """
        while not self._items:
            if self._closing and self._waiting == 0:  # nothing queued and nothing still decoding
                return []
            await self._sleep(None)
        deadline = self._items[0].arrived + self.config.max_wait_ms / 1000
        while len(self._items) < self.config.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._waiting == len(self._items):
                break  # waited long enough, or nothing else is decoding: waiting could only add latency
            await self._sleep(remaining)
        take = min(len(self._items), self.config.max_batch_size)
        batch = [self._items.popleft() for _ in range(take)]
        self._waiting -= take
        return batch

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.budget.forward_workers)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                taken = await self._next_batch()
                if not taken:  # closing, and nothing queued or decoding
                    return
                batch = [item for item in taken if not item.future.done()]  # skip clients that went away
                if not batch:
                    slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, self.budget.forward_threads))
                running.add(task)
                task.add_done_callback(lambda done: (running.discard(done), slots.release()))
        finally:
            if running:
                await asyncio.wait(running)

    async def _run_batch(self, batch: list[_Item], threads: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._forward_pool, self._forward, batch, threads)
        except Exception as exc:  # a failed forward pass fails its own batch only
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        """When the batching worker ends by an error, fail everything queued with 503 and mark the batcher dead."""
        if task.cancelled():
            self._died = asyncio.CancelledError("the batching worker was cancelled")
        elif task.exception() is not None:
            self._died = task.exception()
            _LOG.error("the batching worker died: %r", self._died)
        if self._died is None:
            return
        error = self.unavailable_error()
        while self._items:
            item = self._items.popleft()
            self._waiting -= 1
            if not item.future.done():
                item.future.set_exception(error)


def _set_torch_threads(count: int) -> None:
    """Sets this thread's torch thread count (forward threads call it before every pass)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
