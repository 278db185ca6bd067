"""Progress on long work: a bar on a terminal, else one plain line every few seconds (for logs and pipes).

A job whose stderr is a file or a pipe (a batch job, ``2>log``, CI, SageMaker's CloudWatch) gets no carriage-return
bar, which would be one endless line there, but it should not look hung either::

    extract features: 1280/8687 img (15%), 96 img/s, about 1 min 17 s left

The interval is 5 seconds; ``$DOGCLF_PROGRESS_SECONDS`` changes it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["PROGRESS_SECONDS_ENV", "ProgressLines", "progress_reporter"]

PROGRESS_SECONDS_ENV = "DOGCLF_PROGRESS_SECONDS"
_DEFAULT_SECONDS = 5.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class ProgressLines:
    """A progress report that prints a line to stderr at most every ``interval`` seconds (tqdm's update/close).

    Args:
        total: How many units the work has.
        desc: What is being done, the start of each line.
        unit: The unit's name (``"img"``).
        interval: Seconds between lines.
    """

    def __init__(self, total: int, *, desc: str, unit: str = "it", interval: float = _DEFAULT_SECONDS) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.started = time.monotonic()
        self.last = self.started
        self.printed = 0

    def line(self) -> str:
        """The current state in words."""
        elapsed = time.monotonic() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({math.floor(100 * self.n / self.total)}%)"
        text += f", {rate:.0f} {self.unit}/s" if rate >= 1 else f", {rate:.2f} {self.unit}/s"
        if rate > 0 and self.n < self.total:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        return text

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units done; prints a line if ``interval`` seconds passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and self.n < self.total:  # the end is for close() to report
            self.last = now
            self.printed += 1
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Prints a closing line with the totals, if the work took long enough to print any line."""
        if self.printed:
            print(f"{self.line()} in {_duration(time.monotonic() - self.started)}", file=sys.stderr, flush=True)
            self.printed = 0

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class _Silent:
    """A progress report that reports nothing."""

    def update(self, n: int = 1) -> None:
        """Does nothing."""

    def close(self) -> None:
        """Does nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress_reporter(
    total: int,
    *,
    desc: str,
    unit: str = "it",
    bar: bool | None = None,
    enabled: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A tqdm bar (``bar`` true; by default when stderr is a terminal), else :class:`ProgressLines`.

    Both have ``update(n)`` and ``close()`` and are context managers.

    Args:
        total: How many units the work has.
        desc: What is being done.
        unit: The unit's name.
        bar: Force the bar (``True``) or the lines (``False``); ``None`` decides by ``sys.stderr.isatty()``.
        enabled: ``False`` for a report that prints nothing at all.
        environ: Where ``$DOGCLF_PROGRESS_SECONDS`` is read; ``os.environ`` when ``None``.

    Raises:
        ValueError: If ``$DOGCLF_PROGRESS_SECONDS`` is not a positive number.
    """
    if not enabled:
        return _Silent()
    if sys.stderr.isatty() if bar is None else bar:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    raw = (os.environ if environ is None else environ).get(PROGRESS_SECONDS_ENV, "").strip()
    try:
        interval = float(raw) if raw else _DEFAULT_SECONDS
    except ValueError:
        interval = -1.0
    if not interval > 0 or not math.isfinite(interval):
        raise ValueError(f"{PROGRESS_SECONDS_ENV}={raw!r} must be a positive number of seconds (or unset for 5).")
    return ProgressLines(total, desc=desc, unit=unit, interval=interval)
