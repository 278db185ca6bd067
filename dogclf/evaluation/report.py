"""Evaluating a trained model: top-1/top-5, per-class accuracy, confusions, calibration, a confusion-matrix PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dogclf._progress import progress_reporter
from dogclf.classifier import Classifier
from dogclf.data.folder import Sample
from dogclf.errors import UnreadableImageError
from dogclf.inference.threads import ThreadBudget
from dogclf.training.calibration import ece_from_confidences, reliability_bins

__all__ = ["EvalReport", "evaluate", "plot_confusion_matrix", "plot_reliability", "report_from_logits"]


@dataclass
class EvalReport:
    """The result of :func:`evaluate`.

    Attributes:
        n: Images evaluated.
        top1: Fraction whose best class is right.
        top5: Fraction whose right class is among the best five (or all, with fewer classes).
        loss: Mean cross-entropy.
        class_names: Names in index order.
        confusion: ``confusion[true][pred]`` counts.
        ece: Expected calibration error of the scores the classifier gives (its temperature applied).
        ece_uncalibrated: The same at temperature 1 (raw softmax).
        unknown_rate: Fraction of images the model flags unknown (its novelty score where it has one, else its
            top score under the unknown threshold; ``None``: the model has no threshold).
        temperature: The model's temperature.
        unknown_threshold: The model's unknown threshold, if any.
        precision: The precision the forward passes ran in (``"fp32"``, ``"bf16"``, ``"fp16"``), if known.
        reliability: The reliability table of the calibrated scores (15 bins,
            :func:`~dogclf.training.calibration.reliability_bins`): per non-empty bin its edges, image count, mean
            top score and accuracy. :func:`plot_reliability` draws it.
    """

    n: int
    top1: float
    top5: float
    loss: float
    class_names: list[str]
    confusion: list[list[int]] = field(repr=False)
    ece: float = float("nan")
    ece_uncalibrated: float = float("nan")
    unknown_rate: float | None = None
    temperature: float = 1.0
    unknown_threshold: float | None = None
    precision: str | None = None
    reliability: list[dict[str, float]] = field(default_factory=list, repr=False)

    def per_class(self) -> dict[str, dict[str, float]]:
        """Accuracy and image count of each class that has images."""
        result: dict[str, dict[str, float]] = {}
        for i, row in enumerate(self.confusion):
            total = sum(row)
            if total:
                result[self.class_names[i]] = {"accuracy": row[i] / total, "n": total}
        return result

    def most_confused(self, limit: int = 10) -> list[dict[str, Any]]:
        """The off-diagonal pairs with the most mistakes, most first."""
        pairs = [
            {"true": self.class_names[t], "predicted": self.class_names[p], "count": count}
            for t, row in enumerate(self.confusion)
            for p, count in enumerate(row)
            if t != p and count
        ]
        return sorted(pairs, key=lambda d: (-d["count"], d["true"], d["predicted"]))[:limit]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict with ``top1``, ``top5``, ``n``, ``per_class`` and more."""
        return {
            "n": self.n,
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "per_class": self.per_class(),
            "most_confused": self.most_confused(),
            "class_names": self.class_names,
            "confusion": self.confusion,
            "ece": self.ece,
            "ece_uncalibrated": self.ece_uncalibrated,
            "unknown_rate": self.unknown_rate,
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "precision": self.precision,
            "reliability": self.reliability,
        }


def evaluate(
    classifier: Classifier,
    samples: Sequence[Sample] | str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool | None = False,
    budget: ThreadBudget | None = None,
) -> EvalReport:
    """Runs the classifier over labelled samples, streaming them through its engine.

    Images are decoded in threads while forward passes run (see :meth:`dogclf.inference.Engine.stream`); scores
    and the unknown decision come from the classifier's post-processing, as ``predict`` and ``serve`` give them.

    Args:
        classifier: The trained model.
        samples: Labelled images (labels index ``classifier.class_names``), or a folder of class folders, read with
            :func:`dogclf.data.labelled.load_labelled` against the classifier's classes (by folder id or name).
        batch_size: Kept for compatibility; the engine picks its forward batch.
        num_workers: Decoding threads (``None``: the thread budget's; 0: decode between forward passes).
        progress: ``True``: a progress bar; ``None``: a bar on a terminal, else a line every few seconds;
            ``False``: neither.
        budget: The whole thread budget (overrides ``num_workers``).

    Returns:
        The report.

    Raises:
        UnreadableImageError: A sample that cannot be decoded (``load_splits`` leaves such files out).
    """
    del batch_size
    if isinstance(samples, (str, os.PathLike)):
        from dogclf.data.labelled import load_labelled

        samples = load_labelled(samples, classifier.classes).samples
    if not samples:
        raise ValueError("evaluate() needs at least one image")
    budget = budget or ThreadBudget.plan(decode_workers=num_workers)
    logits: list[torch.Tensor] = []
    unknown: list[torch.Tensor] = []
    reporter = progress_reporter(len(samples), desc="evaluate", unit="img", bar=progress, enabled=progress is not False)
    with reporter:
        for batch in classifier.engine.stream([s.path for s in samples], budget=budget):
            if batch.failures:
                index, reason = batch.failures[0]
                raise UnreadableImageError(f"{reason} (image {index} of the split)")
            logits.append(batch.output.logits)
            unknown.append(classifier.scores(batch.output).unknown)  # the decision predict and serve make
            reporter.update(len(batch.positions))
    return report_from_logits(
        torch.cat(logits),
        torch.tensor([s.label for s in samples], dtype=torch.long),
        class_names=classifier.class_names,
        temperature=classifier.temperature,
        unknown_threshold=classifier.unknown_threshold,
        unknown=torch.cat(unknown) if classifier.post.flags_unknown else None,
        precision=classifier.precision,
    )


def report_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str],
    temperature: float = 1.0,
    unknown_threshold: float | None = None,
    unknown: torch.Tensor | None = None,
    precision: str | None = None,
) -> EvalReport:
    """The report of raw logits against true labels (from images, or from a head over cached features).

    Args:
        logits: ``(N, C)`` raw scores.
        labels: ``(N,)`` true class indices.
        class_names: Names in index order (``C`` of them).
        temperature: The model's temperature (scores are ``softmax(logits / temperature)``).
        unknown_threshold: Top scores under it count as unknown; ``None``: never unknown.
        unknown: ``(N,)`` the unknown flags the model's post-processing gave (its novelty score's where it has one,
            :meth:`dogclf.inference.PostProcessor.scores`), used instead of the threshold; ``None``: top score under
            ``unknown_threshold``.
        precision: The precision the logits were computed in, for the report.

    Returns:
        The report.
    """
    logits = logits.float()
    labels = labels.long()
    n, n_classes = logits.shape
    if n == 0:
        raise ValueError("an evaluation report needs at least one image")
    if n_classes != len(class_names):
        raise ValueError(f"{n_classes} logit columns but {len(class_names)} class names")
    best = logits.topk(min(5, n_classes), dim=1).indices
    correct = best[:, 0] == labels
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, best[:, 0]), torch.ones_like(labels), accumulate=True)
    raw = torch.softmax(logits, dim=1).max(dim=1).values  # top softmax score at temperature 1
    calibrated = torch.softmax(logits / temperature, dim=1).max(dim=1).values  # as Classifier.probabilities gives it
    return EvalReport(
        n=n,
        top1=float(correct.double().mean()),
        top5=float((best == labels[:, None]).any(dim=1).double().mean()),
        loss=float(torch.nn.functional.cross_entropy(logits, labels)),
        class_names=list(class_names),
        confusion=confusion.tolist(),
        ece=ece_from_confidences(calibrated, correct),
        ece_uncalibrated=ece_from_confidences(raw, correct),
        unknown_rate=_unknown_rate(calibrated, unknown_threshold, unknown),
        temperature=temperature,
        unknown_threshold=unknown_threshold,
        precision=precision,
        reliability=reliability_bins(calibrated, correct),
    )


def _unknown_rate(calibrated: torch.Tensor, threshold: float | None, unknown: torch.Tensor | None) -> float | None:
    if unknown is not None:
        return float(unknown.double().mean())
    return None if threshold is None else float((calibrated < threshold).double().mean())


def plot_confusion_matrix(report: EvalReport, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Writes the confusion matrix as a PNG heat map (rows: true class, columns: predicted).

    Rows are normalised to fractions so small classes are as readable as large
    ones; with many classes the tick labels get smaller.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(report.confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(report.class_names)
    side = min(40.0, max(5.0, 0.22 * n + 3))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    font = max(3.0, min(9.0, 400.0 / max(n, 1)))
    ax.set_xticks(range(n), report.class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), report.class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if counts[t, p]:
                    colour = "white" if fractions[t, p] > 0.5 else "black"
                    ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=font, color=colour)
    ax.set_title(title or f"top-1 {report.top1:.1%} on {report.n} images")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_reliability(report: EvalReport, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Writes the reliability diagram of the calibrated scores as a PNG.

    Top: one bar per confidence bin at the bin's accuracy, a black line at the bin's mean top score, the gap between
    them hatched, and the diagonal a calibrated model would follow; bottom: how many images fall in each bin (log
    scale). The title gives the ECE
    before and after the temperature.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    bins = report.reliability
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    width = [b["high"] - b["low"] for b in bins]
    lefts = [b["low"] for b in bins]
    accuracy = [b["accuracy"] for b in bins]
    confidence = [b["confidence"] for b in bins]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    top.bar(lefts, accuracy, width=width, align="edge", color="#4c72b0", edgecolor="white", label="accuracy in bin")
    low = [min(a, c) for a, c in zip(accuracy, confidence, strict=True)]
    gap = [abs(a - c) for a, c in zip(accuracy, confidence, strict=True)]
    top.bar(
        lefts,
        gap,
        bottom=low,
        width=width,
        align="edge",
        fill=False,
        hatch="///",
        edgecolor="#c44e52",
        linewidth=0,
        label="gap to mean confidence",
    )
    top.hlines(
        confidence, lefts, [b["high"] for b in bins], colors="black", linewidth=1.5, label="mean confidence in bin"
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(
        title or f"ECE {report.ece_uncalibrated:.3f} -> {report.ece:.3f} (T={report.temperature:.2f}), n={report.n}",
        fontsize=10,
    )
    bottom.bar(lefts, [b["n"] for b in bins], width=width, align="edge", color="#55a868", edgecolor="white")
    bottom.set_yscale("log")
    bottom.set_ylabel("images")
    bottom.set_xlabel("calibrated top score (confidence)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
