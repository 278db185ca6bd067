"""Everything one profiled run measured, in one object: the report and ``profile.json`` are drawn from it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogclf.diagnostics.profiler.steps import COMPONENTS, StepTiming
from dogclf.diagnostics.profiler.system import Sample
from dogclf.diagnostics.profiler.window import OperatorStat

__all__ = ["PhaseRow", "RunProfile", "percentile"]

TRAINING_PHASES = ("head training", "training")


@dataclass(frozen=True)
class PhaseRow:
    """One row of the phase table: ``seconds`` excludes nested phases; ``start`` is seconds since the run began."""

    name: str
    seconds: float
    start: float


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class RunProfile:
    """What a profiled ``train()`` measured (times in seconds since the run began).

    Attributes:
        wall: Wall time of the run (from the first step of ``train()`` to the report).
        phases: Phase times in the order they first ran; they add up to ``wall`` less what ran outside any phase.
        intervals: ``(phase, start, end)`` of each phase run, for the time axis.
        steps: Every training step's breakdown.
        validation: Seconds of each epoch's validation.
        checkpointing: Seconds of each epoch's checkpoint write and callbacks.
        samples: System samples.
        operators: The torch.profiler operator table of the recorded window.
        recorded_steps: The steps in the torch.profiler window.
        trace_files: Trace files of the window.
        device: The training device.
        head_only: Whether the head trained alone on features.
        info: Run facts for the header (backbone, batch size, workers, ...).
        rule_findings: The training rules' findings (``Finding.to_dict()``).
        cpu_count: Logical CPUs.
    """

    wall: float
    phases: list[PhaseRow]
    intervals: list[tuple[str, float, float]] = field(default_factory=list)
    steps: list[StepTiming] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    checkpointing: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    operators: list[OperatorStat] = field(default_factory=list)
    recorded_steps: list[int] = field(default_factory=list)
    trace_files: list[Path] = field(default_factory=list)
    device: str = "cpu"
    head_only: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    rule_findings: list[dict[str, Any]] = field(default_factory=list)
    cpu_count: int = 1

    @property
    def phase_total(self) -> float:
        """The phases' seconds added up."""
        return sum(p.seconds for p in self.phases)

    def training_window(self) -> tuple[float, float] | None:
        """``(start, end)`` of the training phase, if it ran."""
        spans = [(s, e) for name, s, e in self.intervals if name in TRAINING_PHASES]
        return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None

    def training_samples(self, skip: int = 0) -> list[Sample]:
        """The system samples taken while training, less the first ``skip``."""
        window = self.training_window()
        if window is None:
            return []
        return [s for s in self.samples if window[0] <= s.t <= window[1]][skip:]

    @property
    def has_gpu(self) -> bool:
        """Whether GPU use was sampled."""
        return self.device.startswith("cuda") and any(s.gpu_memory for s in self.samples)

    def component_totals(self) -> dict[str, float]:
        """Seconds per step component, summed over the steps."""
        return {c: sum(getattr(s, c) for s in self.steps) for c in COMPONENTS}

    def step_stats(self) -> list[dict[str, float | str]]:
        """Per component (and the whole step): total seconds, mean / median / p95 milliseconds, share of step time."""
        rows: list[dict[str, float | str]] = []
        everything = sum(s.total for s in self.steps) or 1.0
        for component in (*COMPONENTS, "total"):
            values = [s.total if component == "total" else getattr(s, component) for s in self.steps]
            rows.append(
                {
                    "component": component,
                    "seconds": sum(values),
                    "mean_ms": 1000 * statistics.fmean(values) if values else math.nan,
                    "median_ms": 1000 * percentile(values, 50),
                    "p95_ms": 1000 * percentile(values, 95),
                    "share": sum(values) / everything,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``profile.json``); NaN becomes ``None``."""
        payload = {
            "wall_seconds": self.wall,
            "phase_seconds_total": self.phase_total,
            "phases": [{"name": p.name, "seconds": p.seconds, "start": p.start} for p in self.phases],
            "device": self.device,
            "head_only": self.head_only,
            "info": self.info,
            "steps": {
                "count": len(self.steps),
                "components": self.step_stats(),
                "per_step": [
                    {"step": s.step, "epoch": s.epoch, **{c: getattr(s, c) for c in COMPONENTS}} for s in self.steps
                ],
            },
            "validation_seconds": self.validation,
            "checkpoint_seconds": self.checkpointing,
            "system": {
                "cpu_count": self.cpu_count,
                "samples": len(self.samples),
                "series": [
                    {
                        "t": s.t,
                        "cpu": s.cpu_total,
                        "process_cpu": s.process_cpu,
                        "iowait": s.iowait,
                        "memory": s.memory,
                        "rss_gb": s.rss_gb,
                        "gpu": s.gpu,
                        "gpu_memory": s.gpu_memory,
                    }
                    for s in self.samples
                ],
            },
            "torch_profiler": {
                "recorded_steps": self.recorded_steps,
                "trace_files": [str(p) for p in self.trace_files],
                "operators": [vars(o) for o in self.operators],
            },
            "rule_findings": self.rule_findings,
        }
        return _finite(payload)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
