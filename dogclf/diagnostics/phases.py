"""Wall time per phase of a ``train()`` call (decode-check, extraction, training, calibration, saving, ...).

``train()``'s steps carry ``@phase("name")``. While a :class:`PhaseTimer` is active (``timer.activate()``, done by
the diagnostics session a ``train()`` call opens), each decorated step adds its wall time to the timer; without one
the decorator only calls the step. Phases may nest: a phase's time excludes the phases run inside it, so the phase
times of a run add up to the time the timer was active, minus what ran outside any phase.

A step that raises also ends the active session (its ``on_error`` is called before the exception propagates), so
threads the session started (system sampling, the stall watchdog) stop with the run.

Standard library only: ``dogclf.pipeline.run`` imports it at import time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["PhaseTimer", "PhaseTiming", "active_timer", "phase"]

F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE: ContextVar[PhaseTimer | None] = ContextVar("dogclf_phase_timer", default=None)


@dataclass
class PhaseTiming:
    """One phase's time.

    Attributes:
        name: The phase (``"decode-check"``, ``"extraction"``, ...).
        seconds: Wall time spent in it, excluding phases nested inside it.
        start: When it first started, in seconds since the timer started.
        calls: How many times it ran.
    """

    name: str
    seconds: float = 0.0
    start: float = 0.0
    calls: int = 0


@dataclass
class PhaseTimer:
    """Collects phase times; see the module docstring.

    Attributes:
        started: ``time.perf_counter()`` when the timer was created.
        phases: Phase timings in the order phases first ran.
        on_error: Called with the exception when a decorated step raises (before it propagates).
        intervals: ``(name, start, end)`` of every phase run, in seconds since ``started`` (nested runs included),
            for drawing the phases on a time axis.
    """

    started: float = field(default_factory=time.perf_counter)
    phases: dict[str, PhaseTiming] = field(default_factory=dict)
    on_error: Callable[[BaseException], None] | None = None
    intervals: list[tuple[str, float, float]] = field(default_factory=list)
    _stack: list[list[float]] = field(default_factory=list, repr=False)
    _token: Any = field(default=None, repr=False)

    def elapsed(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.started

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Times the block as phase ``name`` (its nested phases are subtracted)."""
        begin = time.perf_counter()
        self._stack.append([0.0])  # time spent in phases nested inside this one
        try:
            yield
        finally:
            end = time.perf_counter()
            nested = self._stack.pop()[0]
            total = end - begin
            if self._stack:
                self._stack[-1][0] += total
            timing = self.phases.setdefault(name, PhaseTiming(name, start=begin - self.started))
            timing.seconds += total - nested
            timing.calls += 1
            self.intervals.append((name, begin - self.started, end - self.started))

    def add(self, name: str, seconds: float, *, start: float | None = None) -> None:
        """Adds time measured elsewhere to phase ``name`` (e.g. a split of another phase's time)."""
        timing = self.phases.setdefault(name, PhaseTiming(name, start=self.elapsed() if start is None else start))
        timing.seconds += seconds
        timing.calls += 1

    def move(self, source: str, target: str, seconds: float) -> None:
        """Moves ``seconds`` of phase ``source``'s time into phase ``target`` (e.g. validation out of training)."""
        if source in self.phases and seconds > 0:
            self.phases[source].seconds -= seconds
            self.add(target, seconds, start=self.phases[source].start)

    def rename(self, old: str, new: str) -> None:
        """Renames a phase (e.g. ``training`` to ``head training`` once it is known the head trained alone)."""
        if old in self.phases and new not in self.phases:
            self.phases = {(new if k == old else k): v for k, v in self.phases.items()}
            self.phases[new].name = new
            self.intervals = [(new if n == old else n, s, e) for n, s, e in self.intervals]

    @contextmanager
    def activate(self) -> Iterator[PhaseTimer]:
        """Makes this the timer that ``@phase`` steps report to, for the block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def start(self) -> None:
        """Makes this the active timer until :meth:`stop` (for callers that cannot wrap their body in a block)."""
        self._token = _ACTIVE.set(self)

    def stop(self) -> None:
        """Ends :meth:`start`; a no-op when not started or already stopped."""
        token = self._token
        if token is not None:
            self._token = None
            if _ACTIVE.get() is self:
                _ACTIVE.reset(token)


def active_timer() -> PhaseTimer | None:
    """The timer ``@phase`` steps report to now, if any."""
    return _ACTIVE.get()


def phase(name: str) -> Callable[[F], F]:
    """Decorates a step of ``train()`` so that its wall time counts as phase ``name`` of the active timer."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            timer = _ACTIVE.get()
            if timer is None:
                return function(*args, **kwargs)
            try:
                with timer.measure(name):
                    return function(*args, **kwargs)
            except BaseException as exc:
                if timer.on_error is not None:
                    timer.on_error(exc)
                raise

        return timed  # type: ignore[return-value]

    return decorate
