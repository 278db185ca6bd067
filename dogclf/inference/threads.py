"""How an inference process splits its CPU cores between decoding images and the forward pass.

Decoding (Pillow, which releases the GIL) runs in worker threads; forward passes run in forward workers, each with
its own torch (OpenMP) threads. The budget is set on purpose, from what was measured on CPUs:

* decoding, resizing and cropping a photo costs about a tenth of its forward pass, so decoding gets one thread per
  eight cores (at least 1, at most 4), and those cores are taken from the forward passes only from 4 cores up (on 1
  or 2 cores a whole core for decoding would sit idle most of the time);
* a small CNN's forward pass scales poorly over many intra-op threads (every operator ends at an OpenMP barrier, and
  a team whose thread loses its core to another process waits for it), so the cores left are split among
  ``forward_workers`` (2 by default) that run separate batches side by side, each with ``forward_threads`` threads.
  Measured on 2 shared cores: one efficientnet_lite0 forward pass ran at 26 images/s on 1 thread and 3.4 on 2.

torch keeps the thread count per calling thread (OpenMP), and a new thread starts with the count last set anywhere in
the process. :func:`torch_threads` therefore sets it in the thread that runs the forward pass, every time, rather
than trusting whatever the process did before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["ThreadBudget", "available_cores", "torch_threads"]


def available_cores(environ: Mapping[str, str] = os.environ) -> int:
    """The CPU cores this process may use: its affinity mask, capped by ``OMP_NUM_THREADS`` if that is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    raw = environ.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) >= 1:
        cores = min(cores, int(raw))
    return max(1, cores)


@dataclass(frozen=True, kw_only=True)
class ThreadBudget:
    """Threads for decoding and for the forward pass.

    Attributes:
        cores: The cores the budget shares out.
        decode_workers: Threads that decode and resize images (0: decode in the forward thread, no overlap).
        forward_workers: Threads that each run whole forward passes (each on its own batch).
        forward_threads: torch intra-op threads of each forward worker.
    """

    cores: int
    decode_workers: int
    forward_workers: int = 1
    forward_threads: int

    def __post_init__(self) -> None:
        checks = [
            ("decode_workers", self.decode_workers, 0),
            ("forward_workers", self.forward_workers, 1),
            ("forward_threads", self.forward_threads, 1),
            ("cores", self.cores, 1),
        ]
        for name, value, least in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def plan(
        cls,
        *,
        cores: int | None = None,
        decode_workers: int | None = None,
        forward_workers: int | None = None,
        forward_threads: int | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ThreadBudget:
        """The budget for ``cores`` (default :func:`available_cores`), filling in what is not given.

        Decoding gets one thread per eight cores (1 to 4), reserved from the forward passes from 4 cores up; the
        cores left are split among ``forward_workers`` (default: 2, or 1 on one core), at least 1 thread each.
        """
        total = available_cores(environ) if cores is None else cores
        decode = max(1, min(4, total // 8)) if decode_workers is None else decode_workers
        left = total - min(decode, total - 1) if total >= 4 else total
        workers = min(2, left) if forward_workers is None else forward_workers
        if forward_threads is None:
            forward_threads = max(1, left // max(1, workers))
        return cls(cores=total, decode_workers=decode, forward_workers=workers, forward_threads=forward_threads)

    def describe(self) -> str:
        """One line, e.g. ``2 cores: 1 decode thread, 2 forward workers x 1 torch thread``."""
        decode = f"{self.decode_workers} decode thread{'s' if self.decode_workers != 1 else ''}"
        workers = f"{self.forward_workers} forward worker{'s' if self.forward_workers != 1 else ''}"
        threads = f"{self.forward_threads} torch thread{'s' if self.forward_threads != 1 else ''}"
        return f"{self.cores} core{'s' if self.cores != 1 else ''}: {decode}, {workers} x {threads}"

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict of the fields."""
        return {
            "cores": self.cores,
            "decode_workers": self.decode_workers,
            "forward_workers": self.forward_workers,
            "forward_threads": self.forward_threads,
        }


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Runs the block with ``count`` torch threads in this thread, then restores the count (``None``: as is)."""
    import torch

    if count is None:
        yield
        return
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
