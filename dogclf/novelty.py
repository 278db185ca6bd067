"""The feature-space novelty score: how far an image's backbone features are from every known breed.

A max-softmax threshold flags photos that look like nothing the head knows (a cat, a car), but a photo of another
dog breed usually still gets a confident softmax, because the head only learned to tell the known breeds apart. The
backbone's features carry more: photos of a breed the head never saw lie away from every known breed's cluster.
This module measures that distance as the **Mahalanobis distance to the nearest class mean under one covariance
shared by the classes** (Lee et al., 2018, "A simple unified framework for detecting out-of-distribution samples"),
fitted on the training features, with a Ledoit-Wolf shrunk covariance so that it stays well conditioned when the
features are wide (1,280 to 2,048) and the photos few.

The score is ``min_c (x - mu_c)^T S^-1 (x - mu_c)``: higher is more novel. Its threshold keeps
:data:`~dogclf.training.calibration.DEFAULT_KEEP` (95%) of the validation photos as known, like the softmax
threshold. What scoring needs is stored in the model directory as ``novelty.safetensors`` (no pickle): a whitening
matrix ``W`` with ``W W^T = S^-1`` and the class means in whitened space, so a score is a matrix product and a
distance to each class mean. ``config.json`` records the method and threshold under ``"novelty"``; a model without
them loads and behaves as before (the softmax threshold alone).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dogclf.artifact import NOVELTY_NAME
from dogclf.errors import ModelDirError

__all__ = ["NOVELTY_NAME", "NoveltyScorer", "fit_novelty", "ledoit_wolf_shrinkage", "load_novelty"]

METHOD = "mahalanobis"


@dataclass
class NoveltyScorer:
    """Scores backbone features by their Mahalanobis distance to the nearest known class mean.

    Attributes:
        whiten: ``(F, F)`` matrix ``W`` with ``W W^T`` the inverse shared covariance.
        centres: ``(C, F)`` class means times ``W``.
        threshold: Scores above it are novel; ``None``: never novel (no validation photos to set it on).
        keep: The fraction of validation photos the threshold keeps as known.
        shrinkage: The Ledoit-Wolf shrinkage of the covariance, in [0, 1].
    """

    whiten: torch.Tensor
    centres: torch.Tensor
    threshold: float | None = None
    keep: float = 0.95
    shrinkage: float = 0.0

    @torch.inference_mode()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(N,)`` squared Mahalanobis distances to the nearest class mean (float32, CPU); higher is more novel."""
        z = features.float().cpu() @ self.whiten
        return torch.cdist(z, self.centres).min(dim=1).values.pow(2)

    def is_novel(self, scores: torch.Tensor) -> torch.Tensor:
        """``(N,)`` booleans: the score is above the threshold (all false without a threshold)."""
        if self.threshold is None:
            return torch.zeros(len(scores), dtype=torch.bool)
        return scores > self.threshold

    def to_config(self) -> dict[str, Any]:
        """What ``config.json`` records under ``"novelty"``."""
        return {
            "method": METHOD,
            "file": NOVELTY_NAME,
            "threshold": self.threshold,
            "keep": self.keep,
            "shrinkage": self.shrinkage,
        }

    def summary(self) -> str:
        """One log line."""
        if self.threshold is None:
            return "novelty: Mahalanobis score fitted; no threshold (no validation images)"
        return (
            f"novelty: Mahalanobis distance to the nearest breed (shared covariance, shrinkage {self.shrinkage:.3f}); "
            f"threshold {self.threshold:.1f} keeps {self.keep:.0%} of valid"
        )

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Writes ``novelty.safetensors`` into ``model_dir`` (world-readable, written atomically)."""
        from safetensors.torch import save_file

        out = Path(model_dir)
        tmp = out / f".{NOVELTY_NAME}.tmp"
        tensors = {"whiten": self.whiten.contiguous(), "centres": self.centres.contiguous()}
        save_file(tensors, str(tmp), metadata={"method": METHOD})
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / NOVELTY_NAME)
        return out / NOVELTY_NAME


def ledoit_wolf_shrinkage(centred: torch.Tensor) -> float:
    """The Ledoit-Wolf shrinkage of the covariance of ``centred`` rows toward a multiple of the identity.

    The same estimate as scikit-learn's ``ledoit_wolf_shrinkage(assume_centered=True)``, in float64.
    """
    x = centred.double()
    n, p = x.shape
    x2 = x.pow(2)
    mu = float(x2.sum()) / (n * p)
    beta_sum = float((x2.T @ x2).sum())
    delta_sum = float((x.T @ x).pow(2).sum()) / n**2
    beta = (beta_sum / n - delta_sum) / (p * n)
    delta = (delta_sum - 2.0 * mu * float(x2.sum()) / n + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def fit_novelty(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    valid_features: torch.Tensor | None,
    *,
    num_classes: int,
    keep: float = 0.95,
) -> NoveltyScorer:
    """Fits the class means and shrunk shared covariance on training features; the threshold on validation ones.

    Args:
        train_features: ``(N, F)`` training features.
        train_labels: ``(N,)`` their classes.
        valid_features: ``(M, F)`` validation features (known breeds), or ``None``/empty for no threshold.
        num_classes: Number of classes (a class without training rows gets no mean).
        keep: Fraction of validation photos to keep as known, in (0, 1].

    Raises:
        ValueError: No training features, or ``keep`` outside (0, 1].
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    x = train_features.double().cpu()
    y = train_labels.long().cpu()
    if len(x) < 2:
        raise ValueError("The novelty score needs at least 2 training images.")
    present = [c for c in range(num_classes) if bool((y == c).any())]
    means = torch.stack([x[y == c].mean(dim=0) for c in present])
    centred = x - means[torch.tensor([present.index(int(c)) for c in y])]
    alpha = ledoit_wolf_shrinkage(centred)
    covariance = centred.T @ centred / len(x)
    covariance = (1 - alpha) * covariance + alpha * covariance.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    # S^-1 = V diag(1/e) V^T, so W = V diag(1/sqrt(e)) satisfies W W^T = S^-1.
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    floor = float(eigenvalues.max()) * 1e-10
    whiten = vectors / eigenvalues.clamp(min=floor).sqrt()
    scorer = NoveltyScorer(whiten=whiten.float(), centres=(means @ whiten).float(), keep=keep, shrinkage=float(alpha))
    if valid_features is not None and len(valid_features):
        scorer.threshold = novelty_threshold(scorer.score(valid_features), keep)
    return scorer


def novelty_threshold(scores: torch.Tensor, keep: float) -> float:
    """The score that keeps at least ``keep`` of ``scores`` as known (``<=``): the ``ceil(keep * N)``-th lowest."""
    ordered = scores.float().sort().values
    k = max(1, math.ceil(keep * len(ordered) - 1e-9))
    return float(ordered[k - 1])


def load_novelty(model_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> NoveltyScorer | None:
    """The model's novelty scorer, or ``None`` for a model trained without one.

    Raises:
        ModelDirError: ``config.json`` names a novelty file that is missing, unreadable or does not fit the model.
    """
    settings = config.get("novelty")
    if not settings:
        return None
    from safetensors.torch import load_file

    path = Path(model_dir) / str(settings.get("file", NOVELTY_NAME))
    if settings.get("method") != METHOD:
        raise ModelDirError(
            f"{str(Path(model_dir) / 'config.json')!r} has novelty method {settings.get('method')!r}; this dogclf "
            f'knows {METHOD!r}. Upgrade dogclf, or remove the "novelty" entry to use the softmax threshold alone.'
        )
    try:
        tensors = load_file(str(path))
        whiten, centres = tensors["whiten"], tensors["centres"]
    except Exception as exc:
        raise ModelDirError(
            f"The model's novelty file {str(path)!r} is missing or unreadable ({type(exc).__name__}: {exc}); copy it "
            'with the model, or remove the "novelty" entry from config.json to use the softmax threshold alone.'
        ) from exc
    width = config.get("num_features")
    if whiten.dim() != 2 or whiten.shape[0] != whiten.shape[1] or (width is not None and whiten.shape[0] != width):
        raise ModelDirError(
            f"{str(path)!r} holds a {tuple(whiten.shape)} whitening matrix; the backbone has {width} features."
        )
    if centres.dim() != 2 or centres.shape[1] != whiten.shape[1]:
        raise ModelDirError(
            f"{str(path)!r} holds class means of shape {tuple(centres.shape)}, not (classes, {whiten.shape[1]})."
        )
    threshold = settings.get("threshold")
    return NoveltyScorer(
        whiten=whiten.float(),
        centres=centres.float(),
        threshold=None if threshold is None else float(threshold),
        keep=float(settings.get("keep", 0.95)),
        shrinkage=float(settings.get("shrinkage", 0.0)),
    )
