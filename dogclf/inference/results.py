"""What a classification answers for one image: ranked breeds and the unknown flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ImageResult", "Prediction"]


@dataclass(frozen=True)
class Prediction:
    """One ranked answer: class index, display name and probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"label", "score", "index"}``."""
        return {"label": self.label, "score": self.score, "index": self.index}


@dataclass(frozen=True)
class ImageResult:
    """The answer for one image: ranked breeds, and whether it looks like none of them.

    Attributes:
        predictions: The top-k breeds, best first (calibrated scores).
        unknown: True when the model's unknown decision (:meth:`dogclf.inference.PostProcessor.scores`) says so.
    """

    predictions: list[Prediction]
    unknown: bool

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"predictions": [{"label", "score", "index"}, ...], "unknown": bool}``."""
        return {"predictions": [p.to_dict() for p in self.predictions], "unknown": self.unknown}
