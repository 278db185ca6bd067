"""Evaluating a trained model: top-1/top-5, per-class accuracy, confusions, calibration, a confusion-matrix PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dogclf.classifier import Classifier
from dogclf.data.dataset import ImageDataset
from dogclf.data.folder import Sample
from dogclf.training.calibration import ece_from_confidences

__all__ = ["EvalReport", "evaluate", "plot_confusion_matrix"]


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
        }


def evaluate(
    classifier: Classifier,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalReport:
    """Runs the classifier over labelled samples.

    Args:
        classifier: The trained model.
        samples: Labelled images (labels index ``classifier.class_names``).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for decoding.
        progress: Show a progress bar.

    Returns:
        The report.
    """
    n_classes = len(classifier.class_names)
    if not samples:
        raise ValueError("evaluate() needs at least one image")
    dataset = ImageDataset(samples, classifier.transform, min_size=classifier.preprocessing.resize_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    k = min(5, n_classes)
    top1 = top5 = 0
    loss_sum = 0.0
    top_raw: list[torch.Tensor] = []  # top softmax score at temperature 1, per image
    top_calibrated: list[torch.Tensor] = []  # top score as Classifier.probabilities gives it
    hits: list[torch.Tensor] = []
    unknown: list[bool] = []  # the classifier's own unknown decision, per image
    batches: Any = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    with torch.inference_mode():
        for images, labels in batches:
            logits, novelty = classifier.scores(images)  # in the classifier's precision, as predictions are made
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            top5 += int((best == labels[:, None]).any(dim=1).sum())
            confusion.index_put_((labels, best[:, 0]), torch.ones_like(labels), accumulate=True)
            top_raw.append(torch.softmax(logits, dim=1).max(dim=1).values)
            top_calibrated.append(torch.softmax(logits / classifier.temperature, dim=1).max(dim=1).values)
            hits.append(best[:, 0] == labels)
            novel = [None] * len(labels) if novelty is None else novelty.tolist()
            unknown += [classifier.is_unknown(t, v) for t, v in zip(top_calibrated[-1].tolist(), novel, strict=True)]
    n = len(samples)
    correct = torch.cat(hits)
    calibrated = torch.cat(top_calibrated)
    threshold = classifier.unknown_threshold
    decides = threshold is not None or (classifier.novelty is not None and classifier.novelty.threshold is not None)
    return EvalReport(
        n=n,
        top1=top1 / n,
        top5=top5 / n,
        loss=loss_sum / n,
        class_names=list(classifier.class_names),
        confusion=confusion.tolist(),
        ece=ece_from_confidences(calibrated, correct),
        ece_uncalibrated=ece_from_confidences(torch.cat(top_raw), correct),
        unknown_rate=float(sum(unknown) / n) if decides else None,
        temperature=classifier.temperature,
        unknown_threshold=threshold,
    )


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
