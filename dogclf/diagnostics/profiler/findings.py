"""Findings in the manner of SageMaker Debugger's profiler rules, with what to change.

=====================  =============================================================================================
rule                   fires when (thresholds are SageMaker's defaults)
=====================  =============================================================================================
``CPUBottleneck``      with a GPU: GPU under ``gpu_threshold`` % while the CPU is over ``cpu_threshold`` % for more
                       than ``threshold`` % of training; on a CPU: all cores over ``cpu_threshold`` % for more than
                       ``threshold`` % of training (the run is compute-bound on the CPU)
``IOBottleneck``       the loop waits for data more than ``threshold`` % of its step time, or I/O wait is over
                       ``io_threshold`` % for more than ``threshold`` % of training (with a GPU under
                       ``gpu_threshold`` %)
``LowGPUUtilization``  the 95th percentile of GPU use is under ``threshold_p95`` % (underused), or it is above but the
                       5th percentile is under ``threshold_p5`` % (fluctuating); GPU runs only
``BatchSize``          the 95th percentiles of CPU (and GPU, and GPU memory) use are all under their thresholds: the
                       hardware has room for a larger batch
``StepOutlier``        more than ``n_outliers`` steps are over ``stddev`` standard deviations from the mean step time
=====================  =============================================================================================

SageMaker's ``patience`` skips the first 100-1000 samples of a job that lasts hours; dogclf's runs often last
minutes, so ``patience`` here skips the first 2 samples (1 s) of training, and a rule needs ``min_samples`` samples
of training to judge at all.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dogclf.diagnostics.profiler.data import RunProfile, percentile
from dogclf.diagnostics.profiler.steps import COMPONENTS
from dogclf.diagnostics.rules.base import AWS_RULES_URL

__all__ = ["PROFILER_RULES", "ProfileFinding", "profile_findings"]


@dataclass(frozen=True)
class ProfileFinding:
    """One profiler rule's verdict.

    Attributes:
        rule: The rule's name.
        status: ``IssuesFound``, ``NoIssuesFound``, ``NotApplicable`` (e.g. GPU rules on a CPU) or ``NotEnoughData``.
        detail: What was measured.
        advice: What to change (for ``IssuesFound``).
        parameters: The thresholds used.
        anchor: The rule's section of the AWS documentation.
    """

    rule: str
    status: str
    detail: str
    advice: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    anchor: str = ""

    @property
    def documentation(self) -> str:
        """The AWS documentation of the SageMaker rule."""
        return f"{AWS_RULES_URL}#{self.anchor}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**vars(self), "documentation": self.documentation}


def _fraction(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


def _cpu_bottleneck(run: RunProfile, p: Mapping[str, Any]) -> tuple[str, str, str]:
    samples = run.training_samples(p["patience"])
    if run.has_gpu:
        busy = [bool(s.gpu) and max(s.gpu) < p["gpu_threshold"] and s.cpu_total > p["cpu_threshold"] for s in samples]
        share = _fraction(busy)
        detail = (
            f"GPU under {p['gpu_threshold']}% while the CPU was over {p['cpu_threshold']}% in {share:.0f}% of training"
        )
        advice = (
            "The GPU waits for the CPU: more --workers, the feature cache (frozen backbone, no --augment), or "
            "a CPU-heavier instance."
        )
    else:
        share = _fraction([s.cpu_total > p["cpu_threshold"] for s in samples])
        own = statistics.fmean(s.process_cpu for s in samples) if samples else 0.0
        detail = (
            f"all {run.cpu_count} cores over {p['cpu_threshold']}% in {share:.0f}% of training, on the CPU "
            f"(this process: {own:.0f}% of the cores on average; the rest is other processes)"
        )
        advice = (
            "Training is compute-bound on the CPU: a GPU instance (e.g. ml.g5.xlarge), a smaller backbone, or "
            "the feature path (--freeze without --augment) which runs the backbone once per image."
        )
    return ("IssuesFound" if share > p["threshold"] else "NoIssuesFound"), detail, advice


def _io_bottleneck(run: RunProfile, p: Mapping[str, Any]) -> tuple[str, str, str]:
    totals = run.component_totals()
    step_time = sum(totals.values())
    waiting = 100.0 * totals["data"] / step_time if step_time else 0.0
    samples = run.training_samples(p["patience"])
    io = [
        s.iowait > p["io_threshold"] and (not run.has_gpu or (bool(s.gpu) and max(s.gpu) < p["gpu_threshold"]))
        for s in samples
    ]
    io_share = _fraction(io)
    detail = f"data wait {waiting:.0f}% of step time; I/O wait over {p['io_threshold']}% in {io_share:.0f}% of training"
    advice = (
        "The loop waits for data: raise --workers, keep features in the cache (frozen backbone, no --augment), "
        "put the images on a local disk (SageMaker: FastFile or File input mode, not a network share)."
    )
    found = waiting > p["threshold"] or io_share > p["threshold"]
    return ("IssuesFound" if found else "NoIssuesFound"), detail, advice


def _low_gpu(run: RunProfile, p: Mapping[str, Any]) -> tuple[str, str, str]:
    if not run.has_gpu:
        return "NotApplicable", "no GPU was used", ""
    values = [max(s.gpu) for s in run.training_samples(p["patience"]) if s.gpu]
    if not values:
        return "NotEnoughData", "GPU utilisation was not measured (install nvidia-ml-py for NVML)", ""
    p95, p5 = percentile(values, 95), percentile(values, 5)
    detail = f"GPU utilisation p95 {p95:.0f}%, p5 {p5:.0f}%"
    if p95 < p["threshold_p95"]:
        return "IssuesFound", detail + " (underused)", "A larger --batch-size, more --workers, or a smaller instance."
    if p5 < p["threshold_p5"]:
        return "IssuesFound", detail + " (fluctuating)", "The GPU idles between steps: more --workers, pinned memory."
    return "NoIssuesFound", detail, ""


def _batch_size(run: RunProfile, p: Mapping[str, Any]) -> tuple[str, str, str]:
    samples = run.training_samples(p["patience"])
    cpu95 = percentile([s.cpu_total for s in samples], 95)
    detail = f"p95 of CPU use {cpu95:.0f}%"
    low = cpu95 < p["cpu_threshold_p95"]
    if run.has_gpu:
        gpu95 = percentile([max(s.gpu) for s in samples if s.gpu], 95)
        mem95 = percentile([max(s.gpu_memory) for s in samples if s.gpu_memory], 95)
        detail += f", GPU {gpu95:.0f}%, GPU memory {mem95:.0f}%"
        low = low and not gpu95 >= p["gpu_threshold_p95"] and mem95 < p["gpu_memory_threshold_p95"]
    batch = run.info.get("batch_size")
    advice = f"The hardware has room: try a larger --batch-size (now {batch}), or a smaller instance."
    return ("IssuesFound" if low else "NoIssuesFound"), detail, advice


def _step_outlier(run: RunProfile, p: Mapping[str, Any]) -> tuple[str, str, str]:
    totals = [s.total for s in run.steps]
    if len(totals) < 3:
        return "NotEnoughData", f"{len(totals)} training step(s)", ""
    mean, sigma = statistics.fmean(totals), statistics.pstdev(totals)
    outliers = [s for s in run.steps if sigma > 0 and abs(s.total - mean) > p["stddev"] * sigma]
    detail = f"{len(outliers)} of {len(totals)} steps beyond {p['stddev']} standard deviations"
    detail += f" of the mean {mean * 1000:.1f} ms"
    if outliers:
        worst = max(outliers, key=lambda s: s.total)
        part = max(COMPONENTS, key=lambda c: getattr(worst, c))
        detail += f"; slowest: step {worst.step} (epoch {worst.epoch}) {worst.total * 1000:.0f} ms, mostly {part}"
    advice = (
        "Look at what the slow steps share: the first steps of an epoch (DataLoader workers starting: "
        "--workers, persistent workers), a checkpoint write, another process on the machine."
    )
    return ("IssuesFound" if len(outliers) > p["n_outliers"] else "NoIssuesFound"), detail, advice


_Judge = Callable[[RunProfile, Mapping[str, Any]], tuple[str, str, str]]
PROFILER_RULES: dict[str, tuple[_Judge, dict[str, Any], str]] = {
    "CPUBottleneck": (
        _cpu_bottleneck,
        {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 2},
        "cpu-bottleneck",
    ),
    "IOBottleneck": (
        _io_bottleneck,
        {"threshold": 50, "gpu_threshold": 70, "io_threshold": 50, "patience": 2},
        "io-bottleneck",
    ),
    "LowGPUUtilization": (_low_gpu, {"threshold_p95": 70, "threshold_p5": 10, "patience": 2}, "low-gpu-utilization"),
    "BatchSize": (
        _batch_size,
        {"cpu_threshold_p95": 70, "gpu_threshold_p95": 70, "gpu_memory_threshold_p95": 70, "patience": 2},
        "batch-size-rule",
    ),
    "StepOutlier": (_step_outlier, {"stddev": 5, "n_outliers": 10}, "step-outlier"),
}
_SAMPLED = {"CPUBottleneck", "LowGPUUtilization", "BatchSize"}  # IOBottleneck also reads the step times


def profile_findings(
    run: RunProfile, params: Mapping[str, Mapping[str, Any]] | None = None, *, min_samples: int = 4
) -> list[ProfileFinding]:
    """Every profiler rule's verdict on ``run``; ``params`` overrides thresholds by rule name."""
    findings = []
    for name, (judge, defaults, anchor) in PROFILER_RULES.items():
        p = {**defaults, **(params or {}).get(name, {})}
        samples = len(run.training_samples(p.get("patience", 0)))
        if name in _SAMPLED and samples < min_samples and not (name == "LowGPUUtilization" and not run.has_gpu):
            status, detail, advice = "NotEnoughData", f"{samples} system sample(s) during training", ""
        else:
            status, detail, advice = judge(run, p)
        findings.append(ProfileFinding(name, status, detail, advice if status == "IssuesFound" else "", p, anchor))
    return findings
