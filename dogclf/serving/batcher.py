"""Dynamic batching: many clients' images, one forward pass.

Each request's images are decoded and transformed in a small thread pool (Pillow releases the GIL while decoding),
then wait in a bounded queue. One worker coroutine takes up to ``max_batch_size`` images at a time, waiting at most
``max_wait_ms`` after the oldest one arrived for more to join, and runs the forward pass in its own thread (torch
releases the GIL), so the event loop keeps accepting and answering requests while the model works.

Admission is decided once per request, before any decoding: when the images already waiting plus the new ones would
exceed ``queue_size``, the request is refused with 503 and ``Retry-After``. A request whose image cannot be decoded
fails alone with 400/413; it never enters the queue, so it cannot disturb the batch it would have joined.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dogclf.serving.codec import Limits, RequestError, image_tensor

__all__ = ["BatchConfig", "BatchStats", "Batcher", "default_decode_workers"]


def default_decode_workers(cpu_count: int | None = None) -> int:
    """Decoding threads for a machine: half its cores (the forward pass uses the rest), from 1 to 4."""
    cores = cpu_count if cpu_count is not None else os.cpu_count() or 1
    return max(1, min(4, cores // 2))


@dataclass(frozen=True)
class BatchConfig:
    """How requests are gathered into forward passes.

    Attributes:
        max_batch_size: Most images in one forward pass.
        max_wait_ms: How long the oldest waiting image may wait for others to join its batch.
        queue_size: Most images waiting (decoding or queued) before requests are refused with 503.
        decode_workers: Threads that decode and transform images (``None``: :func:`default_decode_workers`).
        retry_after_s: The ``Retry-After`` seconds sent with a 503.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256
    decode_workers: int | None = None
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks = [
            ("max_batch_size", self.max_batch_size, self.max_batch_size >= 1, "an integer >= 1"),
            ("max_wait_ms", self.max_wait_ms, self.max_wait_ms >= 0, "a number >= 0"),
            ("queue_size", self.queue_size, self.queue_size >= 1, "an integer >= 1"),
            ("retry_after_s", self.retry_after_s, self.retry_after_s >= 0, "an integer >= 0"),
        ]
        if self.decode_workers is not None:
            checks.append(("decode_workers", self.decode_workers, self.decode_workers >= 1, "an integer >= 1"))
        for name, value, ok, wanted in checks:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag} of dogclf serve) must be {wanted}, got {value!r}.")


@dataclass
class BatchStats:
    """Counters since the batcher started (read them for monitoring or tests).

    Attributes:
        requests: Requests answered with predictions.
        images: Images that went through the network.
        batches: Forward passes run.
        largest_batch: Most images in one forward pass.
        rejected: Requests refused because the queue was full.
        failed: Requests that failed (bad images or a failed forward pass).
    """

    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dict(vars(self))


@dataclass
class _Item:
    tensor: Any
    top_k: int
    future: asyncio.Future[Any]
    arrived: float = field(default_factory=time.monotonic)


def _single_threaded_torch() -> None:
    """Decoding threads run torch's small per-image ops on one thread.

    Each thread that calls torch gets its own OpenMP team, and idle teams spin for a while; a second 2-thread team
    next to the forward pass's competes with it for the cores and roughly doubled single-request latency here.
    """
    import torch

    torch.set_num_threads(1)


class Batcher:
    """Gathers images from concurrent requests into batched forward passes of one classifier.

    Use it from one event loop: ``await start()``, then ``await classify(...)`` from any number of request handlers,
    then ``await stop()``.

    Args:
        classifier: A loaded :class:`~dogclf.classifier.Classifier` (``transform``, ``probabilities``, ``rank``).
        config: Batching knobs (default :class:`BatchConfig`).
        limits: Request limits; the pixel limit is checked before decoding (default ``Limits()``).
    """

    def __init__(self, classifier: Any, *, config: BatchConfig | None = None, limits: Limits | None = None) -> None:
        self.classifier = classifier
        self.config = config or BatchConfig()
        self.limits = limits or Limits()
        self.stats = BatchStats()
        self._items: collections.deque[_Item] = collections.deque()
        self._waiting = 0  # images admitted and not yet taken into a batch (decoding or queued)
        self._wakeup: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._decode_pool: ThreadPoolExecutor | None = None
        self._forward_pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the batcher accepts work."""
        return self._worker is not None and not self._closing

    async def start(self) -> None:
        """Starts the thread pools and the batching worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("Batcher.start() was already called.")
        workers = self.config.decode_workers or default_decode_workers()
        self._decode_pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="dogclf-decode", initializer=_single_threaded_torch
        )
        self._forward_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dogclf-forward")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="dogclf-batcher")

    async def stop(self) -> None:
        """Refuses new work, finishes every image already queued, then stops the worker and the threads."""
        self._closing = True
        self._wake()
        if self._worker is not None:
            await self._worker
        for pool in (self._decode_pool, self._forward_pool):
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
            RequestError: 503 when the queue is full or the server is stopping, 413 when the request alone holds
                more images than the queue, 400/413 for an image that cannot be decoded.
        """
        n = len(images)
        if labels is None:
            labels = ["image"] if n == 1 else [f"images[{i}]" for i in range(n)]
        self._admit(n)
        self._waiting += n
        loop = asyncio.get_running_loop()
        try:
            tensors = await asyncio.gather(
                *(
                    loop.run_in_executor(self._decode_pool, self._prepare, data, label)
                    for data, label in zip(images, labels, strict=True)
                )
            )
        except BaseException:
            self._waiting -= n
            self.stats.failed += 1
            self._wake()  # a stopping worker waits for decodes in flight
            raise
        items = [_Item(tensor, top_k, loop.create_future()) for tensor in tensors]
        self._items.extend(items)
        self._wake()
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            self.stats.failed += 1
            raise
        self.stats.requests += 1
        return list(results)

    def _admit(self, n: int) -> None:
        retry = {"Retry-After": str(self.config.retry_after_s)}
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

    def _prepare(self, data: bytes, label: str) -> Any:
        """Decodes (header checked first) and transforms one image; runs in the decoding pool."""
        return image_tensor(self.classifier, data, label=label, max_pixels=self.limits.max_pixels)

    def _forward(self, items: list[_Item]) -> list[Any]:
        """One forward pass for a batch; runs in the forward thread."""
        import torch

        results = self.classifier.results(
            torch.stack([item.tensor for item in items]), top_k=max(i.top_k for i in items)
        )
        return [
            dataclasses.replace(r, predictions=r.predictions[: i.top_k]) for r, i in zip(results, items, strict=True)
        ]

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
        """The next batch: up to ``max_batch_size`` items, once full or once the oldest has waited long enough."""
        while not self._items:
            if self._closing and self._waiting == 0:  # nothing queued and nothing still decoding
                return []
            await self._sleep(None)
        deadline = self._items[0].arrived + self.config.max_wait_ms / 1000
        while len(self._items) < self.config.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._sleep(remaining)
        take = min(len(self._items), self.config.max_batch_size)
        batch = [self._items.popleft() for _ in range(take)]
        self._waiting -= take
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            batch = [item for item in batch if not item.future.done()]  # the client went away
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._forward_pool, self._forward, batch)
            except Exception as exc:  # a failed forward pass fails its own batch only
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
