"""Temperature scaling, calibration error and the "unknown dog" threshold, fitted on the validation split.

:func:`calibrate` is the single entry point: give it validation logits and labels (from :func:`collect_logits`, or
precomputed ones) and it returns a :class:`Calibration` whose ``to_dict()`` goes into ``config.json`` under
``"calibration"``. :class:`dogclf.classifier.Classifier` reads it back: scores become ``softmax(logits / T)``, and an
image whose top score is under ``unknown_threshold`` is flagged ``unknown``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dogclf.backbones.spec import Preprocessing
from dogclf.data.folder import Sample

__all__ = [
    "DEFAULT_KEEP",
    "MAX_TEMPERATURE",
    "MIN_CALIBRATION_IMAGES",
    "MIN_TEMPERATURE",
    "Calibration",
    "calibrate",
    "collect_logits",
    "ece_from_confidences",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "unknown_threshold",
]

DEFAULT_KEEP = 0.95
# Below this many validation images the fitted temperature and the 95% threshold are noise (9 images gave 20.0, the
# search bound): calibration is skipped, and the model keeps its raw softmax and no unknown threshold.
MIN_CALIBRATION_IMAGES = 50
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, classes), got {tuple(logits.shape)}")
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels; give one label per row")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}], got {int(labels.min())}..{int(labels.max())}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or infinite values; check the model's outputs before calibrating")
    return logits, labels


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` that minimises the mean NLL of ``softmax(logits / T)``.

    LBFGS on ``log T`` (so ``T`` stays positive), then clamped to
    [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`]. With nothing to learn from (no rows, fewer than two
    classes, or fewer than two distinct labels, where the NLL keeps falling as ``T`` goes to 0) it returns 1.0, and
    it never returns a temperature that fits worse than 1.0.

    Args:
        logits: ``(N, C)`` raw scores.
        labels: ``(N,)`` true class indices.

    Returns:
        The temperature (1.0: leave scores as they are).

    Raises:
        ValueError: Shapes that do not match, labels out of range, or non-finite logits.
    """
    logits, labels = _check_logits(logits, labels)
    if labels.numel() == 0 or logits.shape[1] < 2 or labels.unique().numel() < 2:
        return 1.0
    z = logits.detach().double().cpu()
    y = labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    temperature = min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)
    return temperature if _nll(z, y, temperature) < _nll(z, y, 1.0) else 1.0


def ece_from_confidences(confidences: torch.Tensor, correct: torch.Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error from each image's top score and whether its top class was right.

    Scores are put in ``n_bins`` equal-width bins ``(i/n, (i+1)/n]``; the ECE is the image-weighted mean over bins
    of ``|accuracy - mean confidence|``. It needs only one score and one flag per image, so large evaluations can
    accumulate them batch by batch.

    Args:
        confidences: ``(N,)`` top probabilities in [0, 1].
        correct: ``(N,)`` booleans (or 0/1).
        n_bins: Number of bins (>= 1).

    Returns:
        The ECE in [0, 1].

    Raises:
        ValueError: No images, mismatched lengths, or ``n_bins < 1``.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    conf = torch.as_tensor(confidences).double().reshape(-1)
    hit = torch.as_tensor(correct).double().reshape(-1)
    if conf.numel() != hit.numel():
        raise ValueError(f"{conf.numel()} confidences but {hit.numel()} correctness flags; give one of each per image")
    if conf.numel() == 0:
        raise ValueError("the expected calibration error needs at least one image")
    counts, conf_sums, hit_sums = _binned(conf, hit, n_bins)
    return float((conf_sums - hit_sums).abs().sum() / counts.sum())


def _binned(conf: torch.Tensor, hit: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width bin ``(i/n, (i+1)/n]``: image count, sum of top scores, number right (float64)."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(conf.clamp(0.0, 1.0), edges[1:-1], right=False)  # bin i holds (edges[i], edges[i+1]]
    counts = torch.bincount(bins, minlength=n_bins).double()
    return (
        counts,
        torch.bincount(bins, weights=conf, minlength=n_bins),
        torch.bincount(bins, weights=hit, minlength=n_bins),
    )


def reliability_bins(confidences: torch.Tensor, correct: torch.Tensor, *, n_bins: int = 15) -> list[dict[str, float]]:
    """The reliability table behind :func:`ece_from_confidences`: one dict per non-empty bin.

    Each has ``low`` and ``high`` (the bin's edges), ``n`` (images), ``confidence`` (their mean top score) and
    ``accuracy`` (the fraction right); a calibrated model has ``confidence == accuracy`` in every bin.

    Raises:
        ValueError: As :func:`ece_from_confidences`.
    """
    ece_from_confidences(confidences, correct, n_bins=n_bins)  # the same checks
    conf = torch.as_tensor(confidences).double().reshape(-1)
    hit = torch.as_tensor(correct).double().reshape(-1)
    counts, conf_sums, hit_sums = _binned(conf, hit, n_bins)
    return [
        {
            "low": i / n_bins,
            "high": (i + 1) / n_bins,
            "n": int(counts[i]),
            "confidence": float(conf_sums[i] / counts[i]),
            "accuracy": float(hit_sums[i] / counts[i]),
        }
        for i in range(n_bins)
        if counts[i] > 0
    ]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of class probabilities (top-label ECE, equal-width bins).

    Args:
        probs: ``(N, C)`` probabilities.
        labels: ``(N,)`` true class indices.
        n_bins: Number of confidence bins.

    Returns:
        The ECE in [0, 1]: 0 when, in every bin, the mean top score equals the accuracy.
    """
    probs = torch.as_tensor(probs)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (N, classes) with N = {labels.shape[0]} labels, got {tuple(probs.shape)}")
    confidences, predicted = probs.max(dim=1)
    return ece_from_confidences(confidences, predicted == labels, n_bins=n_bins)


def unknown_threshold(top_scores: torch.Tensor | Sequence[float], keep: float = DEFAULT_KEEP) -> float:
    """The top-score threshold that keeps at least ``keep`` of the given (validation) images as known.

    An image is unknown when its top score is ``< threshold``; the threshold is the ``ceil(keep * N)``-th highest
    score, so at least that many images score ``>= threshold`` (more with ties).

    Args:
        top_scores: ``(N,)`` the top calibrated probability of each image.
        keep: Fraction of images to keep as known, in (0, 1].

    Returns:
        The threshold.

    Raises:
        ValueError: ``keep`` outside (0, 1], or no scores.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    scores = torch.as_tensor(top_scores, dtype=torch.float32).reshape(-1)
    if scores.numel() == 0:
        raise ValueError("an unknown threshold needs at least one validation image")
    k = max(1, math.ceil(keep * scores.numel() - 1e-9))
    return float(scores.sort(descending=True).values[k - 1])


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted, as stored in ``config.json`` under ``"calibration"``.

    Attributes:
        temperature: Scores are ``softmax(logits / temperature)``; 1.0 leaves them unchanged.
        unknown_threshold: Top scores under it mark an image unknown; ``None``: never unknown.
        keep: The fraction of validation images the threshold keeps as known.
        ece_before: Validation ECE at temperature 1 (``None`` when not calibrated).
        ece_after: Validation ECE at ``temperature``.
        nll_before: Validation mean NLL at temperature 1.
        nll_after: Validation mean NLL at ``temperature``.
        n: Validation images used (0: not calibrated).
        precision: The precision the validation logits were computed in (``"fp32"``, ``"bf16"``, ``"fp16"``); the
            model is served in it by default, so served scores are the ones calibrated. ``None``: not recorded.
        skipped: Why calibration was skipped, if it was (too few images, a fit that ran to a search bound); not
            stored in ``config.json``, where a skipped calibration leaves no ``"calibration"`` entry at all.
    """

    temperature: float = 1.0
    unknown_threshold: float | None = None
    keep: float = DEFAULT_KEEP
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    n: int = 0
    precision: str | None = None
    skipped: str | None = None

    @property
    def fitted(self) -> bool:
        """Whether it was fitted on some images (False for the identity of a run without validation data)."""
        return self.n > 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field but ``skipped``."""
        data = asdict(self)
        del data["skipped"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calibration:
        """Reads :meth:`to_dict` output; missing keys (older models) take the defaults (temperature 1.0)."""
        data = dict(data or {})
        temperature = float(data.get("temperature", 1.0))
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"calibration temperature must be a finite number > 0, got {temperature!r}")

        def optional(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            temperature=temperature,
            unknown_threshold=optional("unknown_threshold"),
            keep=float(data.get("keep", DEFAULT_KEEP)),
            ece_before=optional("ece_before"),
            ece_after=optional("ece_after"),
            nll_before=optional("nll_before"),
            nll_after=optional("nll_after"),
            n=int(data.get("n", 0)),
            precision=data.get("precision"),
        )

    def summary(self) -> str:
        """One log line, e.g. ``calibration: temperature=1.38 ece 0.081 -> 0.023; unknown threshold 0.412 ...``."""
        if not self.fitted:
            why = self.skipped or "no validation images"
            return f"calibration: skipped ({why}); temperature 1.0, no unknown threshold"
        line = f"calibration: temperature={self.temperature:.2f} ece {self.ece_before:.3f} -> {self.ece_after:.3f}"
        if self.unknown_threshold is not None:
            line += f"; unknown threshold {self.unknown_threshold:.3f} keeps {self.keep:.0%} of valid (n={self.n})"
        return line


def calibrate(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: float = DEFAULT_KEEP,
    *,
    n_bins: int = 15,
    min_images: int = MIN_CALIBRATION_IMAGES,
) -> Calibration:
    """Fits the temperature and the unknown threshold on validation logits.

    Args:
        logits: ``(N, C)`` raw validation scores of the trained model.
        labels: ``(N,)`` true class indices.
        keep: Fraction of validation images the unknown threshold keeps as known.
        n_bins: Bins of the reported ECE.
        min_images: Fewest validation images to calibrate on; with fewer, calibration is skipped.

    Returns:
        The calibration; with no images, fewer than ``min_images``, every image classified right (the NLL then falls
        for ever as the temperature goes to 0), or a fit that runs to a search bound ([:data:`MIN_TEMPERATURE`,
        :data:`MAX_TEMPERATURE`]), the identity (temperature 1.0, no threshold, ``n == 0``) with ``skipped`` saying
        why.
    """
    logits, labels = _check_logits(logits, labels)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    n = int(labels.numel())
    if n == 0:
        return Calibration(keep=keep)
    if n < min_images:
        return Calibration(
            keep=keep, skipped=f"{n} validation images, fewer than the {min_images} a stable temperature needs"
        )
    logits = logits.detach().float().cpu()
    labels = labels.cpu()
    if bool((logits.argmax(dim=1) == labels).all()):
        return Calibration(
            keep=keep, skipped=f"all {n} validation images are classified right, so no temperature fits best"
        )
    temperature = fit_temperature(logits, labels)
    if temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE):
        return Calibration(
            keep=keep,
            skipped=f"the temperature fit on {n} validation images ran to its search bound {temperature:g}, which is "
            "no fit: too few images, or scores far off",
        )
    # float32, as Classifier.probabilities computes it, so served scores compare with the threshold as fitted.
    before = torch.softmax(logits, dim=1)
    after = torch.softmax(logits / temperature, dim=1)
    return Calibration(
        temperature=temperature,
        unknown_threshold=unknown_threshold(after.max(dim=1).values, keep),
        keep=keep,
        ece_before=expected_calibration_error(before, labels, n_bins),
        ece_after=expected_calibration_error(after, labels, n_bins),
        nll_before=_nll(logits, labels, 1.0),
        nll_after=_nll(logits, labels, temperature),
        n=int(labels.numel()),
    )


def collect_logits(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs a model over labelled images through the inference engine, as ``predict`` and ``serve`` will.

    Args:
        model: The network (``backbone`` + ``head``; put in eval mode for the pass, then back in its previous mode,
            on its previous device and memory format).
        samples: Labelled image files.
        preprocessing: The backbone's input contract.
        batch_size: Kept for compatibility; the engine picks its forward batch.
        num_workers: Decoding threads (``None``: the thread budget's).
        device: Where the model runs.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision the model will be served in.

    Returns:
        ``(logits, labels)``: a float32 ``(N, C)`` tensor and a long ``(N,)`` tensor, on the CPU.
    """
    from dogclf.errors import UnreadableImageError
    from dogclf.inference.engine import EngineOutput, TorchEngine
    from dogclf.inference.threads import ThreadBudget

    del batch_size
    if not samples:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    outputs: list[EngineOutput] = []
    with _restored(model):
        engine = TorchEngine(model, preprocessing, device=device, precision=precision)
        for batch in engine.stream([s.path for s in samples], budget=ThreadBudget.plan(decode_workers=num_workers)):
            if batch.failures:
                raise UnreadableImageError(batch.failures[0][1])
            outputs.append(batch.output)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return EngineOutput.cat(outputs).logits, labels


@contextlib.contextmanager
def _restored(model: torch.nn.Module) -> Iterator[None]:
    """Restores a model's train/eval modes, device and memory format after an inference pass."""
    modes = [(module, module.training) for module in model.modules()]
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    try:
        yield
    finally:
        model.to(device, memory_format=torch.contiguous_format)
        for module, training in modes:
            module.training = training
