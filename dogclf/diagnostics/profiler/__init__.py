"""``dogclf train --profile``: where a training run's time goes, and what to change.

==================  ==============================================================================================
module              what it holds
==================  ==============================================================================================
``system``          :class:`SystemSampler`: CPU per core, I/O wait, memory, GPU use, every 500 ms, for the whole run
``steps``           :class:`StepTimer`: each training step's data wait / forward / backward / optimizer time
``window``          :class:`TorchProfilerWindow`: ``torch.profiler`` over a window of steps (operators, trace)
``data``            :class:`RunProfile`: all of it in one object (and ``profile.json``)
``findings``        CPUBottleneck, IOBottleneck, LowGPUUtilization, BatchSize, StepOutlier, as SageMaker's rules
``report``          the HTML page
==================  ==============================================================================================

The phase times (decode-check, extraction, training, calibration, saving, ...) come from
:mod:`dogclf.diagnostics.phases`. :class:`Profiler` puts the pieces together for one ``train()`` call.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dogclf.diagnostics.phases import PhaseTimer
from dogclf.diagnostics.profiler.data import PhaseRow, RunProfile
from dogclf.diagnostics.profiler.findings import PROFILER_RULES, ProfileFinding, profile_findings
from dogclf.diagnostics.profiler.steps import StepTimer
from dogclf.diagnostics.profiler.system import SystemSampler
from dogclf.diagnostics.profiler.window import TorchProfilerWindow
from dogclf.training.callbacks import Callback

__all__ = ["PROFILER_RULES", "ProfileFinding", "Profiler", "RunProfile", "profile_findings"]

REPORT_NAME = "report.html"
DATA_NAME = "profile.json"


class Profiler:
    """Profiles one ``train()`` call: system sampling throughout, step timing, a torch.profiler window, the report.

    Args:
        report_dir: Where ``report.html``, ``profile.json`` and ``trace/`` go.
        steps: Training steps the torch.profiler window records.
        sample_interval: Seconds between system samples.
        rule_params: Threshold overrides for the profiler rules, by rule name.
    """

    def __init__(
        self,
        report_dir: str | os.PathLike[str],
        *,
        steps: int = 5,
        sample_interval: float = 0.5,
        rule_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        unknown = sorted(set(rule_params or {}) - set(PROFILER_RULES))
        if unknown:
            raise ValueError(f"Unknown profiler rule(s) {unknown}; the profiler rules are: {', '.join(PROFILER_RULES)}")
        self.report_dir = Path(report_dir)
        self.sampler = SystemSampler(sample_interval)
        self.step_timer = StepTimer()
        self.window = TorchProfilerWindow(self.report_dir / "trace", steps=steps, step_timer=self.step_timer)
        self.rule_params = dict(rule_params or {})
        self.report: Path | None = None

    @property
    def first_callbacks(self) -> list[Callback]:
        """Callbacks to place before the other diagnostics callbacks (the step timer's first half)."""
        return [self.step_timer]

    @property
    def last_callbacks(self) -> list[Callback]:
        """Callbacks to place after them: the torch.profiler window, then the step timer's second half."""
        return [self.window, self.step_timer.tail]

    def start(self, started: float | None = None) -> None:
        """Starts sampling; times are relative to ``started`` (a ``time.perf_counter()``; now by default)."""
        started = time.perf_counter() if started is None else started
        self.step_timer.started = started
        self.sampler.start()
        self.sampler.started = started

    def stop(self) -> None:
        """Stops sampling and the torch.profiler window (idempotent)."""
        self.sampler.stop()
        self.window.close()

    def finish(
        self,
        timer: PhaseTimer,
        *,
        info: Mapping[str, Any] | None = None,
        rule_findings: Sequence[Mapping[str, Any]] = (),
    ) -> Path:
        """Writes the report from ``timer``'s phases and what the callbacks measured; returns its path."""
        wall = timer.elapsed()
        self.stop()
        run = self._collect(timer, wall, info or {}, rule_findings)
        findings = profile_findings(run, self.rule_params)
        from dogclf.diagnostics.profiler.report import render_report

        self.report_dir.mkdir(parents=True, exist_ok=True)
        data = run.to_dict()
        data["findings"] = [f.to_dict() for f in findings]
        (self.report_dir / DATA_NAME).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        self.report = self.report_dir / REPORT_NAME
        self.report.write_text(render_report(run, findings), encoding="utf-8")
        return self.report

    def _collect(
        self, timer: PhaseTimer, wall: float, info: Mapping[str, Any], rule_findings: Sequence[Mapping[str, Any]]
    ) -> RunProfile:
        steps = self.step_timer
        for name, spans in (("validation", steps.validation), ("checkpointing", steps.checkpointing)):
            timer.move("training", name, sum(e - s for s, e in spans))
            timer.intervals += [(name, s, e) for s, e in spans]
        timer.move("training", "profiler overhead", steps.overhead)
        if steps.head_only:
            timer.rename("training", "head training")
        ordered = sorted(timer.phases.values(), key=lambda p: p.start)  # stable: split-out phases follow training
        return RunProfile(
            wall=wall,
            phases=[PhaseRow(p.name, p.seconds, p.start) for p in ordered],
            intervals=list(timer.intervals),
            steps=list(steps.steps),
            validation=[e - s for s, e in steps.validation],
            checkpointing=[e - s for s, e in steps.checkpointing],
            samples=list(self.sampler.samples),
            operators=list(self.window.operators),
            recorded_steps=list(self.window.recorded_steps),
            trace_files=list(self.window.trace_files),
            device=steps.device,
            head_only=steps.head_only,
            info=dict(info),
            rule_findings=[dict(f) for f in rule_findings],
            cpu_count=os.cpu_count() or 1,
        )
