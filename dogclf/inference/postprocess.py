"""The one place where a forward pass's output becomes scores and answers: every entry point goes through it.

``predict``, ``evaluate``, ``serve``, the SageMaker handlers and the exported-model engines all hand their
:class:`~dogclf.inference.engine.EngineOutput` (logits and backbone features of a batch) to
:meth:`PostProcessor.scores` (temperature-scaled softmax and the unknown decision) and, for answers, to
:meth:`PostProcessor.results` (top-k). A new "unknown" signal (for example a feature-space novelty score) is added
in :meth:`PostProcessor.unknown`, and every entry point follows: the feature-space novelty score
(:mod:`dogclf.inference.novelty`) is one, scored on the features of the same forward pass as the logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from dogclf.artifact.checks import TEMPERATURE_RANGE  # the temperatures a model may hold
from dogclf.artifact.config import CalibrationRecord, ModelConfig, config_section
from dogclf.inference.results import ImageResult, Prediction

if TYPE_CHECKING:
    from dogclf.inference.engine import EngineOutput
    from dogclf.inference.novelty import NoveltyScorer

__all__ = ["TEMPERATURE_RANGE", "PostProcessor", "Scores"]


@dataclass(frozen=True)
class Scores:
    """The calibrated view of one batch.

    Attributes:
        probabilities: ``(N, C)`` float32 class probabilities, ``softmax(logits / temperature)``.
        unknown: ``(N,)`` booleans: the image looks like none of the known breeds.
        novelty: ``(N,)`` novelty scores (:mod:`dogclf.inference.novelty`) of models that have one, else ``None``.
    """

    probabilities: torch.Tensor
    unknown: torch.Tensor
    novelty: torch.Tensor | None = None

    @property
    def top(self) -> torch.Tensor:
        """``(N,)`` the best probability of each image."""
        return self.probabilities.max(dim=1).values


@dataclass(frozen=True)
class PostProcessor:
    """Temperature, unknown threshold and class names of a model, applied the same way for every entry point.

    Attributes:
        class_names: Display names in index order.
        temperature: Scores are ``softmax(logits / temperature)`` (1.0: raw softmax).
        unknown_threshold: A top score under it flags the image unknown (``None``: never, on the top score alone).
        novelty: The feature-space novelty score (:mod:`dogclf.inference.novelty`); where it has a threshold it decides
            "unknown" instead of the top score.
    """

    class_names: tuple[str, ...]
    temperature: float = 1.0
    unknown_threshold: float | None = None
    novelty: NoveltyScorer | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        low, high = TEMPERATURE_RANGE
        if not (math.isfinite(self.temperature) and low <= self.temperature <= high):
            raise ValueError(
                f"calibration temperature must be a finite number in [{low:g}, {high:g}], got {self.temperature!r}"
            )

    @classmethod
    def from_config(
        cls,
        config: ModelConfig | Mapping[str, Any],
        class_names: Sequence[str] | None = None,
        *,
        novelty: NoveltyScorer | None = None,
    ) -> PostProcessor:
        """Reads a model directory's ``config.json`` (temperature 1.0 and no threshold for uncalibrated models).

        The novelty score's feature bank lives in its own file; pass it loaded (:func:`.novelty.load_novelty`).

        Args:
            config: The model's config, or a dict of part of one (``{"calibration": {...}}``).
            class_names: The class names (default: the config's).
            novelty: The loaded novelty score, if the model has one.
        """
        calibration = config_section(config, "calibration") or CalibrationRecord()
        threshold, temperature = calibration.unknown_threshold, calibration.temperature
        names = class_names if class_names is not None else config_section(config, "class_names") or ()
        return cls(
            class_names=tuple(names),
            temperature=1.0 if temperature is None else float(temperature),
            unknown_threshold=None if threshold is None else float(threshold),
            novelty=novelty,
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(N, C)`` (float32) of raw logits.

        The logits are shifted so that each row's largest is 0 before dividing by the temperature: the quotients are
        then at most 0 and cannot overflow to infinity (``inf - inf`` is the NaN a small temperature would give).
        """
        z = logits.float()
        return torch.softmax((z - z.amax(dim=1, keepdim=True)) / self.temperature, dim=1)

    @property
    def by_novelty(self) -> bool:
        """Whether the novelty score decides "unknown" (the model has one, with a threshold)."""
        return self.novelty is not None and self.novelty.threshold is not None

    @property
    def flags_unknown(self) -> bool:
        """Whether any image can be flagged unknown (a novelty or a top-score threshold)."""
        return self.by_novelty or self.unknown_threshold is not None

    def novelty_scores(self, features: torch.Tensor | None, logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """``(N,)`` novelty scores of backbone features and the head's logits of the same images.

        ``None`` for models without a novelty score.
        """
        if self.novelty is None or features is None:
            return None
        return self.novelty.score(features, logits)

    def unknown(self, probabilities: torch.Tensor, novelty: torch.Tensor | None = None) -> torch.Tensor:
        """The unknown decision ``(N,)`` for a batch.

        With a novelty score that has a threshold and the images' ``novelty`` scores, that decides: the features are
        farther from the training photos than the threshold fitted on validation photos. Otherwise a top score under
        the unknown threshold does (never, for models without one).

        Args:
            probabilities: Calibrated probabilities of the batch.
            novelty: The novelty scores of the same images (:meth:`novelty_scores`), or ``None``.
        """
        if self.by_novelty and novelty is not None:
            return self.novelty.is_novel(novelty)  # type: ignore[union-attr]
        if self.unknown_threshold is None:
            return torch.zeros(len(probabilities), dtype=torch.bool)
        return probabilities.max(dim=1).values < self.unknown_threshold

    def scores(self, output: EngineOutput) -> Scores:
        """Calibrated probabilities, novelty scores and unknown flags of one forward pass's output."""
        probabilities = self.probabilities(output.logits)
        novelty = self.novelty_scores(output.features, output.logits)
        return Scores(probabilities, self.unknown(probabilities, novelty), novelty)

    def results(self, scores: Scores, *, top_k: int | Sequence[int] = 5) -> list[ImageResult]:
        """One :class:`ImageResult` per image: the ``top_k`` breeds (one value, or one per image) and the flag."""
        n = len(scores.probabilities)
        ks = [top_k] * n if isinstance(top_k, int) else list(top_k)
        if len(ks) != n:
            raise ValueError(f"{len(ks)} top_k values for {n} images; give one, or one per image")
        classes = len(self.class_names)
        if n == 0:
            return []
        values, indices = scores.probabilities.topk(min(max(ks), classes), dim=1)
        flags = scores.unknown.tolist()
        answers = []
        for row_s, row_i, k, unknown in zip(values.tolist(), indices.tolist(), ks, flags, strict=True):
            ranked = [Prediction(i, self.class_names[i], s) for s, i in zip(row_s[:k], row_i[:k], strict=True)]
            answers.append(ImageResult(ranked, bool(unknown)))
        return answers

    def __call__(self, output: EngineOutput, *, top_k: int | Sequence[int] = 5) -> list[ImageResult]:
        """Scores and answers of one forward pass: :meth:`scores`, then :meth:`results`."""
        return self.results(self.scores(output), top_k=top_k)
