"""Large photos decoded in their own lane, as many at once as a memory budget allows.

A photo near the pixel limit costs hundreds of MB to decode (a 63-megapixel PNG peaks near 450 MB, a WebP near
1.2 GB: Pillow has no reduced-size decoding for them) and seconds of a decoding thread. Decoded in the same threads as
everything else, a few of them at once exhaust memory, and every small request waits behind them. So the server reads
each image's header first (no pixels), estimates what decoding it will hold (:func:`decode_bytes`), and sends the
large ones to a lane of their own, where they wait, without holding a thread, until :class:`DecodeMemory` has room.
Small images never wait for the budget.
"""

from __future__ import annotations

import asyncio
import collections
import math

__all__ = ["LARGE_DECODE_BYTES", "DecodeMemory", "decode_bytes"]

LARGE_DECODE_BYTES = 32 * 1024 * 1024  # about 4 megapixels after draft decoding: a large decode
_BYTES_PER_PIXEL = 8  # the decoded RGBA pixels and one working copy (conversion or reduction)
_DRAFT_FORMATS = ("JPEG", "MPO")


def decode_bytes(width: int, height: int, image_format: str | None, min_size: int | None) -> int:
    """Estimated peak bytes of decoding a ``width`` x ``height`` image for a model resizing to ``min_size``.

    JPEGs are decoded by draft mode at the smallest of 1/1, 1/2, 1/4, 1/8 scale that keeps both sides at least
    ``min_size`` (as :func:`~dogclf.data.images.load_rgb` asks Pillow to); other formats at full size.
    """
    scale = 1
    if image_format in _DRAFT_FORMATS and min_size:
        while scale < 8 and min(width, height) // (scale * 2) >= min_size:
            scale *= 2
    return math.ceil(width / scale) * math.ceil(height / scale) * _BYTES_PER_PIXEL


class DecodeMemory:
    """At most ``limit_bytes`` of estimated decoding memory held at once (use from one event loop).

    Reservations are granted in arrival order. One larger than the whole budget is granted alone, once nothing else
    is held.

    Attributes:
        limit_bytes: The budget.
        in_use: Bytes reserved now.
        peak: The most bytes reserved at once so far.
        waited: Reservations that had to wait for room.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError(f"the decoding memory budget must be >= 1 byte, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self.peak = 0
        self.waited = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, nbytes: int) -> int:
        """Waits until ``nbytes`` (at most the whole budget) fit, reserves them, and returns what to :meth:`release`."""
        nbytes = min(max(nbytes, 0), self.limit_bytes)
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return nbytes
        self.waited += 1
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted just as it was cancelled: give it back
                self.release(nbytes)
            else:
                self._waiters.remove((nbytes, granted))
                self._grant()
            raise
        return nbytes

    def release(self, nbytes: int) -> None:
        """Returns a reservation and grants waiting ones that now fit, in order."""
        self.in_use -= nbytes
        self._grant()

    def _fits(self, nbytes: int) -> bool:
        return self.in_use == 0 or self.in_use + nbytes <= self.limit_bytes

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes, granted = self._waiters.popleft()
            self._take(nbytes)
            granted.set_result(None)
