"""The feature-space novelty score: how far an image's backbone features are from the training photos.

A max-softmax threshold flags photos that look like nothing the head knows, but a photo of another dog breed often
still gets a confident softmax, because the head only learned to tell the known breeds apart. The backbone's features
carry more: a photo of a breed the head never saw lies away from the training photos. This module measures that as
the **k-nearest-neighbour distance** of the L2-normalised features (Sun et al., 2022, "Out-of-distribution detection
with deep nearest neighbors"): one minus the cosine similarity to the ``k``-th most similar training photo. It makes
no assumption about the shape of each breed's cluster; on Imagewoof it beat a Mahalanobis distance to the class
means (shared, shrunk covariance) and the max softmax in an open-set test (docs/benchmarks.md).

The score is in [0, 2], higher is more novel. Its threshold keeps
:data:`~dogclf.training.calibration.DEFAULT_KEEP` (95%) of the validation photos as known, like the softmax
threshold. What scoring needs, the normalised training features (float16), is stored in the model directory as
``novelty.safetensors`` (no pickle); ``config.json`` records the method, ``k`` and the threshold under
``"novelty"``. A model without them loads and behaves as before (the softmax threshold alone).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dogclf.artifact import NOVELTY_NAME
from dogclf.errors import ModelDirError

__all__ = ["DEFAULT_K", "NOVELTY_NAME", "NoveltyScorer", "fit_novelty", "load_novelty", "novelty_threshold"]

METHOD = "knn"
DEFAULT_K = 10
_CHUNK = 4096  # images scored at once (bounds the similarity matrix)


@dataclass
class NoveltyScorer:
    """Scores backbone features by their cosine distance to the ``k``-th nearest training photo.

    Attributes:
        bank: ``(N, F)`` L2-normalised training features (float16 as stored).
        k: Which neighbour's distance is the score.
        threshold: Scores above it are novel; ``None``: never novel (no validation photos to set it on).
        keep: The fraction of validation photos the threshold keeps as known.
    """

    bank: torch.Tensor
    k: int = DEFAULT_K
    threshold: float | None = None
    keep: float = 0.95
    _bank32: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @torch.inference_mode()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(N,)`` one minus the cosine similarity to the ``k``-th most similar training photo (float32, CPU)."""
        if self._bank32 is None:
            self._bank32 = self.bank.float()
        k = min(self.k, len(self._bank32))
        x = torch.nn.functional.normalize(features.float().cpu(), dim=1)
        parts = [
            1.0 - (x[start : start + _CHUNK] @ self._bank32.T).topk(k, dim=1).values[:, -1]
            for start in range(0, len(x), _CHUNK)
        ]
        return torch.cat(parts) if parts else torch.empty(0)

    def is_novel(self, scores: torch.Tensor) -> torch.Tensor:
        """``(N,)`` booleans: the score is above the threshold (all false without a threshold)."""
        if self.threshold is None:
            return torch.zeros(len(scores), dtype=torch.bool)
        return scores > self.threshold

    def to_config(self) -> dict[str, Any]:
        """What ``config.json`` records under ``"novelty"``."""
        return {"method": METHOD, "file": NOVELTY_NAME, "k": self.k, "threshold": self.threshold, "keep": self.keep}

    def summary(self) -> str:
        """One log line."""
        what = f"novelty: distance to the {self.k}th nearest of {len(self.bank)} training photos (cosine)"
        if self.threshold is None:
            return what + "; no threshold (no validation images)"
        return what + f"; threshold {self.threshold:.4f} keeps {self.keep:.0%} of valid"

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Writes ``novelty.safetensors`` into ``model_dir`` (world-readable, written atomically)."""
        from safetensors.torch import save_file

        out = Path(model_dir)
        tmp = out / f".{NOVELTY_NAME}.tmp"
        save_file({"bank": self.bank.half().contiguous()}, str(tmp), metadata={"method": METHOD, "k": str(self.k)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / NOVELTY_NAME)
        return out / NOVELTY_NAME


def fit_novelty(
    train_features: torch.Tensor,
    valid_features: torch.Tensor | None,
    *,
    k: int = DEFAULT_K,
    keep: float = 0.95,
) -> NoveltyScorer:
    """Keeps the normalised training features as the bank; sets the threshold on the validation features.

    The bank is stored as float16 (half the size; the scores move by about 1e-3 of their range).

    Args:
        train_features: ``(N, F)`` training features.
        valid_features: ``(M, F)`` validation features (known breeds), or ``None``/empty for no threshold.
        k: Which neighbour's distance is the score (>= 1).
        keep: Fraction of validation photos to keep as known, in (0, 1].

    Raises:
        ValueError: No training features, a bad ``k`` or ``keep``.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if len(train_features) == 0:
        raise ValueError("The novelty score needs training features.")
    bank = torch.nn.functional.normalize(train_features.float().cpu(), dim=1).half()
    scorer = NoveltyScorer(bank=bank, k=k, keep=keep)
    if valid_features is not None and len(valid_features):
        scorer.threshold = novelty_threshold(scorer.score(valid_features), keep)
    return scorer


def novelty_threshold(scores: torch.Tensor, keep: float) -> float:
    """The score that keeps at least ``keep`` of ``scores`` as known (``<=``): the ``ceil(keep * N)``-th lowest."""
    ordered = scores.float().sort().values
    position = max(1, math.ceil(keep * len(ordered) - 1e-9))
    return float(ordered[position - 1])


def load_novelty(model_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> NoveltyScorer | None:
    """The model's novelty scorer, or ``None`` for a model trained without one.

    Raises:
        ModelDirError: ``config.json`` names a method this dogclf does not know, or a novelty file that is missing,
            unreadable or does not fit the backbone.
    """
    settings = config.get("novelty")
    if not settings:
        return None
    from safetensors.torch import load_file

    root = Path(model_dir)
    if settings.get("method") != METHOD:
        raise ModelDirError(
            f"{str(root / 'config.json')!r} has novelty method {settings.get('method')!r}; this dogclf knows "
            f'{METHOD!r}. Upgrade dogclf, or remove the "novelty" entry to use the softmax threshold alone.'
        )
    path = root / str(settings.get("file", NOVELTY_NAME))
    try:
        bank = load_file(str(path))["bank"]
    except Exception as exc:
        raise ModelDirError(
            f"The model's novelty file {str(path)!r} is missing or unreadable ({type(exc).__name__}: {exc}); copy it "
            'with the model, or remove the "novelty" entry from config.json to use the softmax threshold alone.'
        ) from exc
    width = config.get("num_features")
    if bank.dim() != 2 or len(bank) == 0 or (width is not None and bank.shape[1] != width):
        raise ModelDirError(
            f"{str(path)!r} holds a {tuple(bank.shape)} feature bank; the backbone has {width} features per image."
        )
    threshold, k, keep = settings.get("threshold"), settings.get("k"), settings.get("keep")
    return NoveltyScorer(  # config.json's values were checked on load (dogclf.artifact_checks)
        bank=bank,
        k=DEFAULT_K if k is None else int(k),
        threshold=None if threshold is None else float(threshold),
        keep=0.95 if keep is None else float(keep),
    )
