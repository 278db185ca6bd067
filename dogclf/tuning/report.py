"""What a tuning run leaves behind: ``best_params.json``, ``trials.csv`` and ``history.png``.

These functions read plain trial records (:class:`TrialRecord`), not Optuna objects, so the same writers can serve a
SageMaker tuning job's results later.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogclf._json import dumps

__all__ = [
    "BEST_PARAMS_NAME",
    "HISTORY_PNG_NAME",
    "TRIALS_CSV_NAME",
    "TrialRecord",
    "best_so_far",
    "plot_history",
    "write_best_params",
    "write_trials_csv",
]

BEST_PARAMS_NAME = "best_params.json"
TRIALS_CSV_NAME = "trials.csv"
HISTORY_PNG_NAME = "history.png"


@dataclass(frozen=True)
class TrialRecord:
    """One trial, as the outputs show it.

    Attributes:
        number: The trial's number in its study (0-based, in start order).
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        value: The objective of a complete trial; ``None`` otherwise.
        params: The sampled hyperparameters.
        seconds: Wall time, when the trial has finished.
        last_epoch: The last epoch it reported.
        last_reported: The metric at that epoch (what a pruned trial had reached).
        started: Start time, ISO 8601.
        error: Why it failed.
    """

    number: int
    state: str
    value: float | None
    params: Mapping[str, Any]
    seconds: float | None = None
    last_epoch: int | None = None
    last_reported: float | None = None
    started: str | None = None
    error: str | None = field(default=None)


def best_so_far(records: Sequence[TrialRecord], *, maximize: bool) -> list[tuple[int, float]]:
    """``(trial number, best complete value up to it)`` for every complete trial, in trial-number order."""
    points: list[tuple[int, float]] = []
    best: float | None = None
    for record in sorted(records, key=lambda r: r.number):
        if record.state != "COMPLETE" or record.value is None:
            continue
        if best is None or (record.value > best if maximize else record.value < best):
            best = record.value
        points.append((record.number, best))
    return points


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_best_params(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Writes ``payload`` (best params, value, trial, study) as indented JSON, replacing the file atomically."""
    target = Path(path)
    _atomic_write_text(target, dumps(payload, indent=2) + "\n")
    return target


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def write_trials_csv(path: str | os.PathLike[str], records: Sequence[TrialRecord], param_names: Sequence[str]) -> Path:
    """Writes one row per trial: number, state, value, seconds, last epoch, params, start time, error."""
    target = Path(path)
    names = list(param_names) + sorted({k for r in records for k in r.params} - set(param_names))
    header = ["number", "state", "value", "seconds", "last_epoch", "last_reported", *names, "started", "error"]
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in sorted(records, key=lambda r: r.number):
            seconds = None if r.seconds is None else round(r.seconds, 3)
            writer.writerow(
                [
                    r.number,
                    r.state,
                    _cell(r.value),
                    _cell(seconds),
                    _cell(r.last_epoch),
                    _cell(r.last_reported),
                    *(_cell(r.params.get(name)) for name in names),
                    _cell(r.started),
                    _cell(r.error),
                ]
            )
    os.replace(temporary, target)
    return target


def plot_history(
    path: str | os.PathLike[str],
    records: Sequence[TrialRecord],
    *,
    metric: str,
    maximize: bool,
    title: str = "",
) -> Path:
    """Writes the optimisation history as a PNG.

    Complete trials are dots at their objective, pruned trials crosses at the last value they reported, and a step
    line follows the best complete value so far.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)  # draws without pyplot, so no global state or GUI backend is touched
    ax = figure.add_subplot()
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    pruned = [r for r in records if r.state == "PRUNED" and r.last_reported is not None]
    if complete:
        ax.scatter([r.number for r in complete], [r.value for r in complete], color="tab:blue", label="complete", s=24)
    if pruned:
        ax.scatter(
            [r.number for r in pruned],
            [r.last_reported for r in pruned],
            color="tab:gray",
            marker="x",
            label="pruned (last reported)",
            s=24,
        )
    best = best_so_far(records, maximize=maximize)
    if best:
        last = max(r.number for r in records)
        xs = [n for n, _ in best] + [last]
        ys = [v for _, v in best] + [best[-1][1]]
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    failed = sum(r.state == "FAIL" for r in records)
    ax.set_xlabel("trial" + (f" ({failed} failed, not shown)" if failed else ""))
    ax.set_ylabel(f"{metric} ({'higher' if maximize else 'lower'} is better)")
    ax.set_title(title or f"Optimisation history: {metric}")
    ax.grid(True, alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, format="png")
    return target
