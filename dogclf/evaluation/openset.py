"""How well a model tells photos it should flag ("unknown") from photos of its own breeds.

``dogclf evaluate --unknown-dir DIR`` scores the evaluated split (known breeds) and every image under ``DIR`` (photos
that should be flagged: other breeds, other animals, anything) with both unknown scores a model can have:

* ``softmax``: the top calibrated class probability, flagged under the model's ``unknown_threshold``;
* ``novelty``: the model's novelty score (:mod:`dogclf.inference.novelty`; ``knn+energy`` for models trained now,
  ``knn`` for older ones), flagged above its threshold.

For each it reports the AUROC of telling unknown from known (0.5: chance, 1.0: perfectly apart, threshold-free) and,
at the model's threshold, the fraction of unknown photos flagged (higher is better) and of known photos flagged
(by construction near 5% on the validation split the thresholds were fitted on).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dogclf.classifier import Classifier
from dogclf.data.folder import Sample
from dogclf.data.images import is_image_file
from dogclf.errors import DatasetError, UnreadableImageError

__all__ = ["OpenSetReport", "UnknownScore", "auroc", "evaluate_unknown", "find_images"]


@dataclass(frozen=True)
class UnknownScore:
    """One unknown score's results.

    Attributes:
        name: ``"softmax"`` (flagged when the top calibrated probability is under the threshold) or ``"novelty"``
            (flagged when the model's novelty score is above it).
        auroc: Area under the ROC curve of unknown (positive) against known photos.
        threshold: The model's threshold on this score, or ``None`` if it has none.
        unknown_flagged: Fraction of the unknown photos flagged at the threshold.
        known_flagged: Fraction of the known photos flagged at the threshold.
        decides: Whether this is the score the model's ``unknown`` answers use.
    """

    name: str
    auroc: float
    threshold: float | None
    unknown_flagged: float | None
    known_flagged: float | None
    decides: bool


@dataclass(frozen=True)
class OpenSetReport:
    """:func:`evaluate_unknown`'s result: the known and unknown counts and one :class:`UnknownScore` per score."""

    n_known: int
    n_unknown: int
    scores: list[UnknownScore]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``n_known``, ``n_unknown``, ``scores``: a list of dicts)."""
        return {"n_known": self.n_known, "n_unknown": self.n_unknown, "scores": [asdict(s) for s in self.scores]}

    def lines(self) -> list[str]:
        """The table ``dogclf evaluate`` prints."""
        rows = [f"Unknown photos: {self.n_unknown}, known ({self.n_known}):"]
        rows.append(f"  {'score':<8} {'AUROC':>6}  {'unknown flagged':>15}  {'known flagged':>13}  threshold")
        for s in self.scores:
            flagged = "n/a" if s.unknown_flagged is None else f"{s.unknown_flagged:.1%}"
            false = "n/a" if s.known_flagged is None else f"{s.known_flagged:.1%}"
            threshold = "none" if s.threshold is None else f"{s.threshold:.4g}"
            mark = "  (decides unknown)" if s.decides else ""
            rows.append(f"  {s.name:<8} {s.auroc:>6.3f}  {flagged:>15}  {false:>13}  {threshold}{mark}")
        return rows


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder``, recursively (hidden folders skipped), in a stable order.

    Raises:
        DatasetError: The folder does not exist or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"--unknown-dir {str(root)!r} is not a folder.")
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and is_image_file(p.name) and not _hidden(p.relative_to(root))
    )
    if not paths:
        raise DatasetError(f"--unknown-dir {str(root)!r} holds no image files (.jpg, .jpeg, .png, ...).")
    return paths


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The probability that a random positive scores above a random negative (ties count half): the ROC AUC."""
    scores = torch.cat([positive, negative]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scores(classifier: Classifier, paths: Sequence[Path], batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(top calibrated probability, novelty score or None)`` per image, streamed through the classifier's engine.

    Raises:
        UnreadableImageError: An image that cannot be decoded.
    """
    del batch_size  # the engine picks its forward batch
    top: list[torch.Tensor] = []
    novelty: list[torch.Tensor] = []
    for batch in classifier.engine.stream(paths):
        if batch.failures:
            index, reason = batch.failures[0]
            raise UnreadableImageError(f"{reason} (image {index} of {len(paths)})")
        scores = classifier.scores(batch.output)
        top.append(scores.top)
        if scores.novelty is not None:
            novelty.append(scores.novelty)
    return torch.cat(top) if top else torch.empty(0), torch.cat(novelty) if novelty else None


def evaluate_unknown(
    classifier: Classifier, known: Sequence[Sample], unknown_dir: str | os.PathLike[str], *, batch_size: int = 64
) -> OpenSetReport:
    """Scores known photos (``known``, e.g. the test split) and every image under ``unknown_dir``.

    Raises:
        DatasetError: ``unknown_dir`` has no images, or there are no known photos.
    """
    unknown_paths = find_images(unknown_dir)
    if not known:
        raise DatasetError("Scoring --unknown-dir needs known photos too: the evaluated split has no images.")
    known_top, known_novel = _scores(classifier, [s.path for s in known], batch_size)
    unknown_top, unknown_novel = _scores(classifier, unknown_paths, batch_size)
    novelty = classifier.novelty
    by_novelty = classifier.post.by_novelty
    soft = classifier.unknown_threshold

    def soft_flags(top: torch.Tensor) -> torch.Tensor | None:
        return None if soft is None else top < soft  # the Classifier's rule

    scores = [
        _result(
            "softmax",
            auroc(-unknown_top, -known_top),  # a lower top score is more unknown
            soft,
            soft_flags(unknown_top),
            soft_flags(known_top),
            decides=not by_novelty and soft is not None,
        )
    ]
    if novelty is not None and known_novel is not None and unknown_novel is not None:
        unknown_flags = novelty.is_novel(unknown_novel) if by_novelty else None
        known_flags = novelty.is_novel(known_novel) if by_novelty else None
        scores.append(
            _result(
                "novelty",
                auroc(unknown_novel, known_novel),
                novelty.threshold,
                unknown_flags,
                known_flags,
                decides=by_novelty,
            )
        )
    return OpenSetReport(n_known=len(known), n_unknown=len(unknown_paths), scores=scores)


def _result(
    name: str,
    area: float,
    threshold: float | None,
    unknown_flags: torch.Tensor | None,
    known_flags: torch.Tensor | None,
    *,
    decides: bool,
) -> UnknownScore:
    def rate(flags: torch.Tensor | None) -> float | None:
        return None if flags is None else float(flags.double().mean())

    return UnknownScore(name, area, threshold, rate(unknown_flags), rate(known_flags), decides)
