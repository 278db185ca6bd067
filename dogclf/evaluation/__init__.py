"""Evaluating a trained model on labelled photos: accuracy, calibration, plots, and the "unknown" check.

Modules: :mod:`.report` (:func:`evaluate`, :class:`EvalReport`, the confusion-matrix and reliability plots),
:mod:`.data` (which images ``dogclf evaluate`` scores: a class-folder tree, a split, or a held-out part) and
:mod:`.openset` (how well photos of unseen breeds are flagged unknown). Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "EvalReport": "dogclf.evaluation.report",
    "evaluate": "dogclf.evaluation.report",
    "plot_confusion_matrix": "dogclf.evaluation.report",
    "plot_reliability": "dogclf.evaluation.report",
    "report_from_logits": "dogclf.evaluation.report",
}

__all__ = ["EvalReport", "evaluate", "plot_confusion_matrix", "plot_reliability", "report_from_logits"]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dogclf.evaluation.report import (
        EvalReport,
        evaluate,
        plot_confusion_matrix,
        plot_reliability,
        report_from_logits,
    )
