"""``torch.profiler`` over a window of training steps: the operator table and a trace for Perfetto / TensorBoard.

The window skips the first step (start-up costs), warms up for one, then records ``steps`` steps (fewer when the run
has fewer); the trace is written as Chrome trace JSON (``*.pt.trace.json``), which https://ui.perfetto.dev,
``chrome://tracing`` and TensorBoard's PyTorch profiler plugin (``torch-tb-profiler``) open.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogclf.diagnostics.profiler.steps import StepTimer
from dogclf.training.callbacks import Callback, TrainState

__all__ = ["OperatorStat", "TorchProfilerWindow"]


@dataclass(frozen=True)
class OperatorStat:
    """One operator's totals over the recorded steps (microseconds)."""

    name: str
    calls: int
    self_cpu_us: float
    cpu_us: float
    self_device_us: float


def plan_window(total_steps: int, steps: int) -> tuple[int, int, int]:
    """``(wait, warmup, active)`` steps for a run of ``total_steps`` steps, recording up to ``steps``."""
    wait = 1 if total_steps >= steps + 2 else 0
    warmup = 1 if total_steps - wait >= 2 else 0
    return wait, warmup, max(1, min(steps, total_steps - wait - warmup))


class TorchProfilerWindow(Callback):
    """Runs ``torch.profiler`` over a window of training steps.

    Args:
        trace_dir: Folder for the trace file.
        steps: Steps to record.
        step_timer: Told how long the profiler's own work between steps took, to leave it out of the steps.
    """

    def __init__(self, trace_dir: str | Path, *, steps: int = 5, step_timer: StepTimer | None = None) -> None:
        if steps < 1:
            raise ValueError(f"profile steps must be >= 1, got {steps!r}")
        self.trace_dir = Path(trace_dir)
        self.steps = steps
        self.operators: list[OperatorStat] = []
        self.trace_files: list[Path] = []
        self.window: tuple[int, int, int] = (0, 0, 0)
        self.recorded_steps: list[int] = []
        self._profiler: Any = None
        self._taken = 0
        self._step_timer = step_timer

    def on_train_start(self, state: TrainState) -> None:
        """Starts the profiler on a schedule sized to the run."""
        from torch.profiler import ProfilerActivity, profile, schedule

        total = state.num_batches * max(0, state.config.epochs - state.epoch)
        self.window = plan_window(total, self.steps)
        wait, warmup, active = self.window
        activities = [ProfilerActivity.CPU]
        parameter = next(state.model.parameters(), None)
        if parameter is not None and parameter.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "won't be using warmup" for runs too short for one
            plan = schedule(wait=wait, warmup=warmup, active=active, repeat=1)
        began = time.perf_counter()
        self._profiler = profile(activities=activities, schedule=plan, on_trace_ready=self._trace_ready)
        self._profiler.start()
        if self._step_timer is not None:
            self._step_timer.exclude(time.perf_counter() - began)

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Advances the schedule."""
        if self._profiler is None:
            return
        wait, warmup, active = self.window
        if wait + warmup <= self._taken < wait + warmup + active:
            self.recorded_steps.append(state.step)
        self._taken += 1
        began = time.perf_counter()
        self._profiler.step()
        if self._taken >= wait + warmup + active:
            self.close()
        if self._step_timer is not None:
            self._step_timer.exclude(time.perf_counter() - began)

    def _trace_ready(self, profiler: Any) -> None:
        self.operators = _operators(profiler)
        if not self.recorded_steps:
            return
        path = self.trace_dir / f"dogclf-steps-{self.recorded_steps[0]}-{self.recorded_steps[-1]}.pt.trace.json"
        profiler.export_chrome_trace(str(path))
        self.trace_files.append(path)

    def on_train_end(self, state: TrainState) -> None:
        """Stops the profiler if the run ended inside the window."""
        self.close()

    def close(self) -> None:
        """Stops the profiler; calling it again is harmless."""
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.stop()


def _operators(profiler: Any, limit: int = 20) -> list[OperatorStat]:
    stats = []
    for event in profiler.key_averages():
        device = getattr(event, "self_device_time_total", None)
        if device is None:
            device = getattr(event, "self_cuda_time_total", 0.0)
        stats.append(
            OperatorStat(
                name=event.key,
                calls=int(event.count),
                self_cpu_us=float(event.self_cpu_time_total),
                cpu_us=float(event.cpu_time_total),
                self_device_us=float(device or 0.0),
            )
        )
    key = "self_device_us" if any(s.self_device_us for s in stats) else "self_cpu_us"
    stats.sort(key=lambda s: getattr(s, key), reverse=True)
    return stats[:limit]
