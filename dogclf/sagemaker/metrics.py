"""SageMaker metric definitions, derived from the format that prints the training lines (one source).

SageMaker reads metrics from a job's log with one regex per metric; the regexes come from
:mod:`dogclf.training.log_line`, the module that formats ``epoch=3 train_loss=... valid_top1=...`` and
``test_top1=...``, so a change to the line changes the definitions with it.
"""

from __future__ import annotations

__all__ = ["OBJECTIVE_METRIC", "metric_definitions"]

OBJECTIVE_METRIC = "valid_top1"
"""What a tuning job maximises by default: the last epoch's validation top-1."""


def metric_definitions() -> list[dict[str, str]]:
    """``[{"Name": "valid_top1", "Regex": "..."}, ...]`` for every metric the training lines carry.

    Names are the keys of the lines (``train_loss``, ``valid_loss``, ``valid_top1``, ``train_top1``, ``seconds``,
    ``epoch``, ``test_top1``, ``test_top5``); each regex captures the value (a number, ``nan`` or ``inf``).
    """
    from dogclf.training.log_line import field_patterns

    return [{"Name": name, "Regex": pattern} for name, pattern in field_patterns().items()]
