"""The fixed, parseable lines training prints, and the regexes that read them back (one source for both).

Every epoch ends with one line, and a run with a test split ends with one more::

    epoch=3 train_loss=0.4121 valid_loss=0.3978 valid_top1=0.8817 train_top1=0.8702 seconds=95.2
    test_top1=0.8790 test_top5=0.9850 n=836

The fields below decide both how a value is printed and the regex that captures it, so SageMaker's metric
definitions (:func:`dogclf.sagemaker.metric_definitions`) and any log scraper can never drift from what is printed.
A value that is missing or not a number prints as ``nan`` (``inf``/``-inf`` when infinite), and the regexes accept
those too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "EPOCH_FIELDS",
    "NUMBER_PATTERN",
    "TEST_FIELDS",
    "LineField",
    "field_patterns",
    "format_epoch_line",
    "format_test_line",
]

NUMBER_PATTERN = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)|[-+]?inf|nan"
"""What a printed value looks like: a decimal number, ``nan``, ``inf`` or ``-inf``."""


@dataclass(frozen=True)
class LineField:
    """One ``key=value`` field of a log line.

    Attributes:
        key: The key (also the metric's name).
        decimals: Digits after the point; 0 prints an integer.
    """

    key: str
    decimals: int

    def format(self, value: float | None) -> str:
        """``key=value`` in this field's format (``nan`` for a missing value)."""
        if value is None:
            return f"{self.key}=nan"
        number = float(value)
        if not math.isfinite(number):
            return f"{self.key}={number}"  # nan, inf, -inf: what NUMBER_PATTERN accepts
        if self.decimals == 0:
            return f"{self.key}={int(number)}"
        return f"{self.key}={number:.{self.decimals}f}"

    def pattern(self) -> str:
        """A regex whose one group captures this field's value in a line (not a longer key ending in it).

        Only a word boundary, a group and alternatives: no look-around, so RE2-style engines read it too.
        """
        return rf"\b{self.key}=({NUMBER_PATTERN})"


EPOCH_FIELDS: tuple[LineField, ...] = (
    LineField("epoch", 0),
    LineField("train_loss", 4),
    LineField("valid_loss", 4),
    LineField("valid_top1", 4),
    LineField("train_top1", 4),
    LineField("seconds", 1),
)
"""The epoch line's fields, in print order."""

TEST_FIELDS: tuple[LineField, ...] = (LineField("test_top1", 4), LineField("test_top5", 4), LineField("n", 0))
"""The test line's fields, in print order (``n`` is the number of test images, not a metric)."""


def _format(fields: Sequence[LineField], metrics: Mapping[str, float | None]) -> str:
    return " ".join(field.format(metrics.get(field.key)) for field in fields)


def format_epoch_line(metrics: Mapping[str, float | None]) -> str:
    """Formats one epoch's metrics as the fixed log line.

    ``epoch=3 train_loss=0.8123 valid_loss=0.9034 valid_top1=0.7500 train_top1=0.8000 seconds=12.3``

    Keys always come in this order; losses and accuracies have 4 decimals and accuracies are fractions in [0, 1].
    """
    return _format(EPOCH_FIELDS, {"seconds": 0.0, **metrics})


def format_test_line(metrics: Mapping[str, float | None]) -> str:
    """Formats test-split metrics (``top1``, ``top5``, ``n``) as ``test_top1=0.8790 test_top5=0.9850 n=836``."""
    return _format(TEST_FIELDS, {"test_top1": metrics.get("top1"), "test_top5": metrics.get("top5"), "n": metrics["n"]})


def field_patterns() -> dict[str, str]:
    """Metric name -> regex capturing its value, for every metric the lines carry (epoch and test lines)."""
    return {field.key: field.pattern() for field in (*EPOCH_FIELDS, *TEST_FIELDS) if field.key != "n"}
