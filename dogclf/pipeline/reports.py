"""What a training run leaves beside the model: history, evaluation report and plots (``--output-dir``).

In a SageMaker job the folder is ``SM_OUTPUT_DATA_DIR``, which becomes the job's ``output.tar.gz``::

    history.json             one object per epoch (NaN written as null)
    history.csv              the same as a table
    history.png              train/valid loss and top-1 per epoch
    evaluation_<split>.json  the held-out split's report (dogclf evaluate --json's keys)
    confusion_<split>.png    its confusion matrix
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dogclf.evaluation import EvalReport

__all__ = ["json_safe", "plot_training_history", "write_reports"]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _write_history_csv(path: Path, history: Sequence[Mapping[str, float]]) -> Path:
    keys = list(dict.fromkeys(key for row in history for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow(
                {k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v) for k, v in row.items()}
            )
    return path


def plot_training_history(path: str | os.PathLike[str], history: Sequence[Mapping[str, float]], *, title: str) -> Path:
    """Writes train/valid loss and top-1 per epoch as a PNG (two panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)  # no pyplot: no global state, no GUI backend
    epochs = [int(row["epoch"]) for row in history]
    for index, (metric, label) in enumerate((("loss", "loss"), ("top1", "top-1 accuracy"))):
        ax = figure.add_subplot(1, 2, index + 1)
        for split, colour in (("train", "tab:blue"), ("valid", "tab:orange")):
            values = [row.get(f"{split}_{metric}", math.nan) for row in history]
            if any(math.isfinite(v) for v in values):
                ax.plot(epochs, values, marker="o", color=colour, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, format="png")
    return target


def write_reports(
    folder: str | os.PathLike[str],
    *,
    history: Sequence[Mapping[str, float]],
    report: EvalReport | None,
    split: str,
    title: str,
) -> list[Path]:
    """Writes the history and the held-out split's evaluation into ``folder`` (created); returns the files."""
    from dogclf.evaluation import plot_confusion_matrix

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_json(out / "history.json", list(history)),
        _write_history_csv(out / "history.csv", history),
    ]
    if history:
        written.append(plot_training_history(out / "history.png", history, title=title))
    if report is not None:
        written.append(_write_json(out / f"evaluation_{split}.json", {"split": split, **report.to_dict()}))
        written.append(
            plot_confusion_matrix(
                report, out / f"confusion_{split}.png", title=f"{title} on {split}: top-1 {report.top1:.1%}"
            )
        )
    return written
