"""The novelty score: how far an image is from the breeds of the training photos, for the "unknown" answer.

A max-softmax threshold flags photos that look like nothing the head knows, but a photo of another dog breed often
still gets a confident softmax, because the head only learned to tell the known breeds apart. Three scores are
computed here, each higher for more novel photos:

* ``knn``: one minus the cosine similarity of the L2-normalised backbone features to the ``k``-th most similar
  training photo's (Sun et al., 2022, "Out-of-distribution detection with deep nearest neighbors"). No assumption on
  the shape of a breed's cluster.
* ``mahalanobis``: the squared Mahalanobis distance of the normalised features to the nearest breed's mean, with one
  covariance shared by all breeds (Lee et al., 2018), shrunk towards a multiple of the identity
  (:data:`DEFAULT_SHRINKAGE`) because there are about as many feature dimensions as training photos.
* ``energy``: minus the log-sum-exp of the head's logits divided by the calibrated temperature (Liu et al., 2020).
* ``classknn``: the ``knn`` distance counted among the training photos of the breed the head predicts only: a photo
  close to some training photos, but not to those of the breed it is given, is more novel than ``knn`` says.

A combination such as ``knn+energy`` adds its parts after putting each on the scale of the validation photos (minus
their median, over their interquartile range). ``knn+energy`` is what ``dogclf train`` fits
(:data:`DEFAULT_METHOD`): on the 8-seen/2-unseen open-set benchmark over all 45 pairs of unseen Imagewoof breeds it
told other breeds from known ones better than every other score here, ``knn`` (the default before) included
(docs/benchmarks.md).

The threshold keeps :data:`~dogclf.training.calibration.DEFAULT_KEEP` (95%) of the validation photos as known, like
the softmax threshold. What scoring needs is stored in the model directory as ``novelty.safetensors`` (no pickle):
``bank``, the normalised training features (float16), and for the Mahalanobis distance ``means`` and ``whitener``
(float32). ``config.json`` records the method, ``k``, the temperature, the shrinkage, the scales and the threshold
under ``"novelty"``. Models of earlier releases (method ``knn``, a bank alone) load and score as before; a method this
dogclf does not know is a :class:`~dogclf.errors.ModelDirError` naming the known ones; a model without the entry
behaves as before (the softmax threshold alone).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dogclf.artifact.config import ModelConfig, config_section
from dogclf.artifact.store import NOVELTY_NAME
from dogclf.errors import ModelDirError

__all__ = [
    "DEFAULT_K",
    "DEFAULT_METHOD",
    "DEFAULT_SHRINKAGE",
    "METHODS",
    "NOVELTY_NAME",
    "NoveltyScorer",
    "fit_novelty",
    "load_novelty",
    "novelty_threshold",
]

METHODS = (
    "knn",
    "mahalanobis",
    "energy",
    "classknn",
    "knn+energy",
    "knn+mahalanobis",
    "mahalanobis+energy",
    "classknn+energy",
)
"""The novelty scores this dogclf computes and reads back."""
DEFAULT_METHOD = "knn+energy"
DEFAULT_K = 10
DEFAULT_SHRINKAGE = 0.1
"""Weight of ``mean eigenvalue * identity`` in the shrunk shared covariance of the Mahalanobis distance."""
_CHUNK = 4096  # images scored at once (bounds the similarity matrix)


@dataclass
class NoveltyScorer:
    """Scores backbone features by their distance to the training photos (see the module docstring).

    Attributes:
        bank: ``(N, F)`` L2-normalised training features (float16 as stored); ``None`` for ``mahalanobis``.
        bank_labels: ``(N,)`` the class index of each bank row (``classknn`` methods).
        k: Which neighbour's distance is the ``knn`` score.
        threshold: Scores above it are novel; ``None``: never novel (no validation photos to set it on).
        keep: The fraction of validation photos the threshold keeps as known.
        method: One of :data:`METHODS`.
        means: ``(K, F)`` the breeds' means of the normalised features, whitened (``mahalanobis`` methods).
        whitener: ``(F, F)`` the matrix ``W`` with ``W W^T`` the inverse shrunk shared covariance.
        shrinkage: The covariance shrinkage the whitener was fitted with.
        scales: For a combination, each component's ``(centre, spread)`` on the validation photos; the score is the
            sum of ``(component - centre) / spread``.
        temperature: The head's calibrated temperature, which the ``energy`` score divides the logits by.
    """

    bank: torch.Tensor | None = None
    bank_labels: torch.Tensor | None = None
    k: int = DEFAULT_K
    threshold: float | None = None
    keep: float = 0.95
    method: str = "knn"
    means: torch.Tensor | None = None
    whitener: torch.Tensor | None = None
    shrinkage: float = DEFAULT_SHRINKAGE
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    temperature: float = 1.0
    _bank32: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def components(self) -> tuple[str, ...]:
        """The distances the score is made of (``("knn",)``, ``("mahalanobis",)`` or both)."""
        return tuple(self.method.split("+"))

    @property
    def needs_logits(self) -> bool:
        """Whether :meth:`score` needs the head's logits (the ``energy`` and ``classknn`` methods)."""
        return "energy" in self.components or "classknn" in self.components

    @torch.inference_mode()
    def component_scores(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``(N,)`` float32 scores of each component of the method (CPU).

        Raises:
            ValueError: An ``energy`` or ``classknn`` method without the logits of the same images.
        """
        x = torch.nn.functional.normalize(features.float().cpu(), dim=1)
        if self.needs_logits and (logits is None or len(logits) != len(features)):
            raise ValueError(f"the {self.method!r} novelty score needs the head's logits of the same images")
        out = {}
        if "knn" in self.components:
            out["knn"] = self._knn(x)
        if "classknn" in self.components:
            out["classknn"] = self._classknn(x, logits.float().cpu().argmax(dim=1))  # type: ignore[union-attr]
        if "mahalanobis" in self.components:
            out["mahalanobis"] = self._mahalanobis(x)
        if "energy" in self.components:
            out["energy"] = -torch.logsumexp(logits.float().cpu() / self.temperature, dim=1)  # type: ignore[union-attr]
        return out

    def score(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` novelty scores of backbone features (float32, CPU): higher is more novel.

        Args:
            features: ``(N, F)`` backbone features.
            logits: ``(N, C)`` the head's raw logits of the same images (needed by the ``energy`` methods: the
                negative log-sum-exp of ``logits / temperature``).
        """
        parts = self.component_scores(features, logits)
        if len(parts) == 1:
            return next(iter(parts.values()))
        total = torch.zeros(len(features))
        for name, values in parts.items():
            centre, spread = self.scales.get(name, (0.0, 1.0))
            total += (values - centre) / spread
        return total

    def _bank_float(self) -> torch.Tensor:
        if self.bank is None:
            raise ValueError(f"the {self.method!r} novelty score needs a bank of training features")
        if self._bank32 is None:
            self._bank32 = self.bank.float()
        return self._bank32

    def _knn(self, x: torch.Tensor) -> torch.Tensor:
        bank = self._bank_float()
        k = min(self.k, len(bank))
        chunks = (x[start : start + _CHUNK] for start in range(0, len(x), _CHUNK))
        parts = [1.0 - (chunk @ bank.T).topk(k, dim=1).values[:, -1] for chunk in chunks]
        return torch.cat(parts) if parts else torch.empty(0)

    def _classknn(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """The ``k``-th nearest distance among the bank rows of each image's predicted class (fewer rows: the last)."""
        bank = self._bank_float()
        if self.bank_labels is None:
            raise ValueError(f"the {self.method!r} novelty score needs the class of each training feature")
        labels = self.bank_labels.long()
        counts = torch.bincount(labels, minlength=int(predicted.max()) + 1 if len(predicted) else 0)
        k = min(self.k, len(bank))
        parts = []
        for start in range(0, len(x), _CHUNK):
            rows = predicted[start : start + _CHUNK]
            similarity = (x[start : start + _CHUNK] @ bank.T).masked_fill(labels[None, :] != rows[:, None], -2.0)
            nearest = similarity.topk(k, dim=1).values
            which = counts[rows].clamp(min=1, max=k) - 1  # a class with no bank rows reads -2: as far as it gets
            parts.append(1.0 - nearest.gather(1, which[:, None])[:, 0])
        return torch.cat(parts) if parts else torch.empty(0)

    def _mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        if self.means is None or self.whitener is None:
            raise ValueError("the mahalanobis novelty score needs class means and a whitener")
        z = x @ self.whitener.float()
        means = self.means.float()
        squared = z.pow(2).sum(1, keepdim=True) - 2 * z @ means.T + means.pow(2).sum(1)
        return squared.min(dim=1).values.clamp(min=0.0)

    def is_novel(self, scores: torch.Tensor) -> torch.Tensor:
        """``(N,)`` booleans: the score is above the threshold (all false without a threshold)."""
        if self.threshold is None:
            return torch.zeros(len(scores), dtype=torch.bool)
        return scores > self.threshold

    def to_config(self) -> dict[str, Any]:
        """What ``config.json`` records under ``"novelty"``."""
        config: dict[str, Any] = {"method": self.method, "file": NOVELTY_NAME}
        if "knn" in self.components or "classknn" in self.components:
            config["k"] = self.k
        if "mahalanobis" in self.components:
            config["shrinkage"] = self.shrinkage
        if "energy" in self.components:
            config["temperature"] = self.temperature
        if self.scales:
            config["scales"] = {name: list(pair) for name, pair in self.scales.items()}
        return {**config, "threshold": self.threshold, "keep": self.keep}

    def summary(self) -> str:
        """One log line."""
        what = []
        if "knn" in self.components:
            what.append(f"distance to the {self.k}th nearest of {len(self.bank)} training photos (cosine)")  # type: ignore[arg-type]
        if "classknn" in self.components:
            what.append(f"distance to the predicted breed's {self.k}th nearest training photo (cosine)")
        if "mahalanobis" in self.components:
            what.append(f"Mahalanobis distance to the nearest of {len(self.means)} breeds (shared covariance)")  # type: ignore[arg-type]
        if "energy" in self.components:
            what.append(f"energy of the head's logits (T={self.temperature:.2f})")
        line = "novelty: " + " + ".join(what)
        if self.threshold is None:
            return line + "; no threshold (no validation images)"
        return line + f"; threshold {self.threshold:.4f} keeps {self.keep:.0%} of valid"

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Writes ``novelty.safetensors`` into ``model_dir`` (world-readable, written atomically)."""
        from safetensors.torch import save_file

        tensors = {}
        if self.bank is not None:
            tensors["bank"] = self.bank.half().contiguous()
        if self.bank_labels is not None:
            tensors["bank_labels"] = self.bank_labels.long().contiguous()
        if self.means is not None and self.whitener is not None:
            tensors["means"] = self.means.float().contiguous()
            tensors["whitener"] = self.whitener.float().contiguous()
        out = Path(model_dir)
        tmp = out / f".{NOVELTY_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"method": self.method, "k": str(self.k)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / NOVELTY_NAME)
        return out / NOVELTY_NAME


def fit_novelty(
    train_features: torch.Tensor,
    valid_features: torch.Tensor | None,
    *,
    train_labels: torch.Tensor | None = None,
    valid_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    method: str = "knn",
    k: int = DEFAULT_K,
    keep: float = 0.95,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> NoveltyScorer:
    """Fits the novelty score on the training features; sets its threshold (and scales) on the validation ones.

    Args:
        train_features: ``(N, F)`` training features.
        valid_features: ``(M, F)`` validation features (known breeds), or ``None``/empty for no threshold.
        train_labels: ``(N,)`` class indices of the training features (needed by the ``mahalanobis`` and
            ``classknn`` methods: the indices of the head's logits).
        valid_logits: ``(M, C)`` the head's raw logits of the validation photos (needed by the ``energy`` and
            ``classknn`` methods to set the threshold).
        temperature: The head's calibrated temperature (the ``energy`` score's).
        method: One of :data:`METHODS` (``dogclf train`` uses :data:`DEFAULT_METHOD`).
        k: Which neighbour's distance is the ``knn`` score (>= 1).
        keep: Fraction of validation photos to keep as known, in (0, 1].
        shrinkage: Covariance shrinkage of the Mahalanobis distance, in [0, 1].

    Raises:
        ValueError: No training features, an unknown method, missing labels, a bad ``k``, ``keep`` or ``shrinkage``.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown novelty method {method!r}; choose one of {', '.join(METHODS)}.")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
    if len(train_features) == 0:
        raise ValueError("The novelty score needs training features.")
    x = torch.nn.functional.normalize(train_features.float().cpu(), dim=1)
    scorer = NoveltyScorer(k=k, keep=keep, method=method, shrinkage=shrinkage, temperature=float(temperature))
    labelled = {"mahalanobis", "classknn"} & set(scorer.components)
    if labelled and (train_labels is None or len(train_labels) != len(x)):
        raise ValueError(f"The {method!r} novelty score needs one class label per training feature.")
    if "knn" in scorer.components or "classknn" in scorer.components:
        scorer.bank = x.half()
    if "classknn" in scorer.components:
        scorer.bank_labels = train_labels.cpu().long()  # type: ignore[union-attr]
    if "mahalanobis" in scorer.components:
        scorer.means, scorer.whitener = _gaussian(x, train_labels.cpu().long(), shrinkage)  # type: ignore[union-attr]
    if valid_features is not None and len(valid_features):
        parts = scorer.component_scores(valid_features, valid_logits)
        if len(parts) > 1:
            scorer.scales = {name: _robust_scale(values) for name, values in parts.items()}
        scorer.threshold = novelty_threshold(scorer.score(valid_features, valid_logits), keep)
    return scorer


def _gaussian(x: torch.Tensor, labels: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened class means and the whitener of the shrunk shared covariance of normalised features ``x``."""
    classes = labels.unique()
    means = torch.stack([x[labels == c].mean(dim=0) for c in classes.tolist()])
    centred = (x - means[torch.searchsorted(classes, labels)]).double()
    covariance = centred.T @ centred / max(1, len(x))
    average = covariance.trace() / covariance.shape[0]
    shrunk = (1 - shrinkage) * covariance + shrinkage * average * torch.eye(covariance.shape[0], dtype=torch.float64)
    values, vectors = torch.linalg.eigh(shrunk)
    whitener = (vectors * values.clamp(min=1e-12).rsqrt()).float()
    return means @ whitener, whitener


def _robust_scale(values: torch.Tensor) -> tuple[float, float]:
    """``(median, interquartile range)`` of ``values`` (the range 1.0 where it is 0)."""
    q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    spread = float(q[2] - q[0])
    return float(q[1]), spread if spread > 0 and math.isfinite(spread) else 1.0


def novelty_threshold(scores: torch.Tensor, keep: float) -> float:
    """The score that keeps at least ``keep`` of ``scores`` as known (``<=``): the ``ceil(keep * N)``-th lowest."""
    ordered = scores.float().sort().values
    position = max(1, math.ceil(keep * len(ordered) - 1e-9))
    return float(ordered[position - 1])


def load_novelty(model_dir: str | os.PathLike[str], config: ModelConfig | Mapping[str, Any]) -> NoveltyScorer | None:
    """The model's novelty scorer, or ``None`` for a model trained without one.

    Args:
        model_dir: The model directory (its novelty file is read).
        config: Its config, or a dict with its ``novelty`` (and ``num_features``).

    Raises:
        ModelDirError: ``config.json`` names a method this dogclf does not know, or a novelty file that is missing,
            unreadable or does not fit the backbone.
    """
    settings = config_section(config, "novelty")
    if settings is None or settings.method is None:  # no entry, or an empty one
        return None
    from safetensors.torch import load_file

    root = Path(model_dir)
    method = settings.method
    if method not in METHODS:
        raise ModelDirError(
            f"{str(root / 'config.json')!r} has novelty method {method!r}; this dogclf knows "
            f'{", ".join(repr(m) for m in METHODS)}. Upgrade dogclf, or remove the "novelty" entry to use the '
            "softmax threshold alone."
        )
    path = root / (settings.file or NOVELTY_NAME)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelDirError(
            f"The model's novelty file {str(path)!r} is missing or unreadable ({type(exc).__name__}: {exc}); copy it "
            'with the model, or remove the "novelty" entry from config.json to use the softmax threshold alone.'
        ) from exc
    scorer = NoveltyScorer(method=method)
    _check_tensors(scorer.components, tensors, path, config_section(config, "num_features"))
    threshold, k, keep = settings.threshold, settings.k, settings.keep
    shrinkage, temperature = settings.shrinkage, settings.temperature  # null means the default
    scales = settings.scales or {}
    return NoveltyScorer(  # config.json's values were checked on load (dogclf.artifact.checks)
        bank=tensors.get("bank"),
        bank_labels=tensors.get("bank_labels"),
        k=DEFAULT_K if k is None else int(k),
        threshold=None if threshold is None else float(threshold),
        keep=0.95 if keep is None else float(keep),
        method=method,
        means=tensors.get("means"),
        whitener=tensors.get("whitener"),
        shrinkage=DEFAULT_SHRINKAGE if shrinkage is None else float(shrinkage),
        temperature=1.0 if temperature is None else float(temperature),
        scales={str(name): (float(pair[0]), float(pair[1])) for name, pair in scales.items()},
    )


def _check_tensors(components: tuple[str, ...], tensors: Mapping[str, torch.Tensor], path: Path, width: Any) -> None:
    """Raises :class:`ModelDirError` unless the file holds what the method needs, ``width`` features wide."""
    banked = "knn" in components or "classknn" in components
    needed = (["bank"] if banked else []) + (["means", "whitener"] if "mahalanobis" in components else [])
    if "classknn" in components:
        _check_bank_labels(tensors, path)
    for name in needed:
        tensor = tensors.get(name)
        shape = None if tensor is None else tuple(tensor.shape)
        wide = tensor is not None and tensor.dim() == 2 and len(tensor) > 0
        if not wide or (width is not None and tensor.shape[1] != width):  # type: ignore[union-attr]
            what = "no" if tensor is None else f"a {shape}"
            raise ModelDirError(
                f"{str(path)!r} holds {what} {name!r} tensor; the novelty method {'+'.join(components)!r} needs one "
                f"with {width} features per row (the backbone's)."
            )


def _check_bank_labels(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raises :class:`ModelDirError` unless ``bank_labels`` holds one non-negative class index per bank row."""
    labels, bank = tensors.get("bank_labels"), tensors.get("bank")
    rows = None if bank is None else len(bank)
    fits = labels is not None and labels.dim() == 1 and len(labels) == rows and not labels.is_floating_point()
    if not fits or bool((labels < 0).any()):  # type: ignore[operator]
        what = "no" if labels is None else f"a {tuple(labels.shape)} {labels.dtype}"
        raise ModelDirError(
            f"{str(path)!r} holds {what} 'bank_labels' tensor; the 'classknn' novelty methods need one class index "
            f"(>= 0) per row of 'bank' ({rows} rows). Copy the file with the model, or retrain it."
        )
