"""The L-BFGS head: a linear head fitted as full-batch multinomial logistic regression with an L2 penalty.

This is how linear probes of pretrained models are usually evaluated: on fixed features the problem is convex, so a
quasi-Newton solver reaches its optimum in a few hundred full-batch steps (seconds), with no learning rate, batch
size or epoch count to choose. The one hyperparameter, the penalty, is chosen by stratified k-fold cross-validation
on the training features over a log grid (:data:`C_GRID`), by held-out log-loss.

The penalty follows scikit-learn's ``LogisticRegression``: the fit minimises ::

    (1 / N) * sum_i w_i * CE(x_i, y_i)  +  ||W||^2 / (2 * C * N)

(the bias is not penalised; ``w_i`` are the class weights, 1 without them), the same minimiser as scikit-learn's
``C * sum_i w_i * CE_i + ||W||^2 / 2``. Larger ``C`` means a weaker penalty.

Cross-validation walks the grid from the strongest penalty up, warm-starting each fold from its fit at the previous
``C``, and stops once the held-out log-loss has been worse than the best for two grid points in a row (weak
penalties are the slowest to fit and, on features this separable, the least likely to win).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from dogclf.hardware import resolve_device
from dogclf.training.callbacks import Callback, CallbackList, TrainState
from dogclf.training.config import TrainConfig
from dogclf.training.schedule import balanced_class_weights, make_loss

if TYPE_CHECKING:
    from dogclf.features.pipeline import FeatureSet
    from dogclf.model import DogClassifierNet

__all__ = [
    "C_GRID",
    "Basis",
    "CvResult",
    "LbfgsFit",
    "LbfgsHeadFitter",
    "cross_validate_c",
    "stratified_fold_ids",
    "fit_lbfgs_head",
    "fit_logistic",
    "linear_layer",
]

logger = logging.getLogger(__name__)

C_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""The penalties cross-validation chooses from (scikit-learn's ``C``, half-decade steps)."""

_PATIENCE = 2  # grid points worse than the best before the walk up the grid stops
_TOL = 1e-4  # max |gradient| at convergence, as scikit-learn's lbfgs ``tol``
_MAX_ITER = 1000


@dataclass
class CvResult:
    """The cross-validation of the penalty.

    Attributes:
        folds: Number of folds.
        grid: The penalties tried, in order (strongest first); the walk may stop before the end of :data:`C_GRID`.
        log_loss: Held-out log-loss at each (pooled over the folds).
        top1: Held-out top-1 at each.
        best_c: The ``C`` with the lowest held-out log-loss.
        seconds: Wall time of the cross-validation.
        oof_logits: ``(N, K)`` out-of-fold logits at :attr:`best_c`: each training row scored by the fold fit that
            did not see it (float32, CPU). Calibration can be fitted on them (``--calibrate-on oof``); not stored
            in ``config.json``.
    """

    folds: int
    grid: list[float] = field(default_factory=list)
    log_loss: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    best_c: float = float("nan")
    seconds: float = 0.0
    oof_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def best_index(self) -> int:
        """Position of :attr:`best_c` in :attr:`grid`."""
        return self.grid.index(self.best_c)


@dataclass
class LbfgsFit:
    """How an L-BFGS head was fitted, as recorded in ``config.json`` under ``training.head_fit``.

    Attributes:
        c: The penalty used.
        chosen_by: ``"cv"`` (cross-validation) or ``"given"`` (``penalty_c``).
        iterations: L-BFGS iterations of the final fit.
        converged: Whether the final fit reached the gradient tolerance within the iteration limit.
        seconds: Wall time of cross-validation and final fit.
        cv: The cross-validation, when it chose ``c``.
        final_c: The C of the final fit when extra rows (degraded views) joined it: ``c * photos / rows``, the same
            penalty per photo (``None``: ``c``).
    """

    c: float
    chosen_by: str
    iterations: int
    converged: bool
    seconds: float
    cv: CvResult | None = None
    final_c: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``solver``, ``c``, ``chosen_by``, ..., ``cv`` with its table)."""
        data = {"solver": "lbfgs", **asdict(self)}
        if self.cv is not None:
            del data["cv"]["oof_logits"]
            data["cv"]["best_log_loss"] = self.cv.log_loss[self.cv.best_index]
            data["cv"]["best_top1"] = self.cv.top1[self.cv.best_index]
        return data

    def summary(self) -> str:
        """One log line: the penalty, how it was chosen, its CV score, iterations and time."""
        line = f"L-BFGS head: C={self.c:g}"
        if self.cv is not None:
            i = self.cv.best_index
            line += (
                f" chosen by {self.cv.folds}-fold cross-validation over {len(self.cv.grid)} values "
                f"{self.cv.grid[0]:g}..{self.cv.grid[-1]:g} (CV log-loss {self.cv.log_loss[i]:.4f}, "
                f"CV top-1 {self.cv.top1[i]:.4f})"
            )
        else:
            line += " (given)"
        line += "; final fit"
        if self.final_c is not None:
            line += f" with the degraded views at C={self.final_c:.3g} (the same penalty per photo):"
        line += f" {self.iterations} iterations" + ("" if self.converged else " (iteration limit)")
        return line + f", {self.seconds:.1f} s in all"


def linear_layer(head: torch.nn.Module) -> torch.nn.Linear | None:
    """The head's only layer if it is a single ``nn.Linear`` (no hidden layer, no dropout), else ``None``."""
    layers = list(head.children()) if isinstance(head, torch.nn.Sequential) else [head]
    if len(layers) == 1 and isinstance(layers[0], torch.nn.Linear):
        return layers[0]
    return None


@dataclass(frozen=True)
class Basis:
    """The eigenbasis of the training features' covariance, used to precondition L-BFGS (never to change the fit).

    Features are centred (the unpenalised bias absorbs the mean) and rotated into this basis, and each direction is
    scaled by ``(curvature * eigenvalue + penalty)^-1/2``, the inverse square root of the objective's Hessian along
    it. The optimum is the same; L-BFGS needs far fewer iterations on raw backbone features, whose directions differ
    in variance by orders of magnitude.
    """

    mean: torch.Tensor
    vectors: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> Basis:
        """The basis of ``x``'s rows (eigen-decomposition in float64, stored in ``x``'s dtype)."""
        mean = x.double().mean(dim=0)
        centred = x.double() - mean
        values, vectors = torch.linalg.eigh(centred.T @ centred / max(1, len(x)))
        return cls(mean.to(x.dtype), vectors.to(x.dtype), values.clamp(min=0).to(x.dtype))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) @ vectors``: the features in this basis."""
        return (x - self.mean) @ self.vectors


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    c: float,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = _MAX_ITER,
    tol: float = _TOL,
    basis: Basis | None = None,
    rotated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Fits multinomial logistic regression with an L2 penalty by L-BFGS (see the module docstring).

    Args:
        x: ``(N, F)`` features (on the device to fit on).
        y: ``(N,)`` class indices, or ``(N, K)`` class probabilities (per-row smoothed targets).
        num_classes: Number of classes ``K``.
        c: Inverse penalty strength (scikit-learn's ``C``), > 0.
        class_weights: ``(K,)`` per-class loss weights, or ``None``.
        label_smoothing: Label smoothing of the cross-entropy.
        init: ``(weight (K, F), bias (K,))`` to start from (warm start); zeros otherwise.
        max_iter: Most L-BFGS iterations.
        tol: Stop when every gradient entry (in the preconditioned coordinates) is at most this.
        basis: The preconditioner (:class:`Basis`); computed from ``x`` when not given. Cross-validation computes it
            once over all training rows and reuses it for every fold.
        rotated: ``basis.rotate(x)``, if already computed.

    Returns:
        ``(weight, bias, iterations, converged)``.
    """
    basis = basis if basis is not None else Basis.of(x)
    z = rotated if rotated is not None else basis.rotate(x)
    n = len(z)
    penalty = 1.0 / (c * n)  # the objective is mean loss + penalty * ||W||^2 / 2
    scale = (basis.values / num_classes + penalty).rsqrt()  # softmax curvature is about 1 / K per direction
    zs = z * scale
    if init is None:
        v = torch.zeros(num_classes, z.shape[1], device=z.device, dtype=z.dtype)
        shift = torch.zeros(num_classes, device=z.device, dtype=z.dtype)
    else:
        weight, bias = (t.detach().to(z.device, z.dtype) for t in init)
        v, shift = (weight @ basis.vectors) / scale, bias + weight @ basis.mean
    v.requires_grad_(True)
    shift.requires_grad_(True)
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if class_weights is None else class_weights.to(z.device, z.dtype),
        label_smoothing=float(label_smoothing),
        reduction="sum",
    )
    optimizer = torch.optim.LBFGS(
        [v, shift],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(zs @ v.T + shift, y) / n + 0.5 * penalty * (v * scale).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[optimizer._params[0]]["n_iter"])
    closure()  # the gradient at the solution
    grad = torch.cat([v.grad.reshape(-1), shift.grad.reshape(-1)])  # type: ignore[union-attr]
    converged = bool(grad.abs().max() <= tol * 1.01)
    with torch.no_grad():
        weight = (v * scale) @ basis.vectors.T
        bias = shift - weight @ basis.mean
    return weight.detach(), bias.detach(), iterations, converged


def stratified_fold_ids(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A stratified fold number per row: each class's rows, shuffled by ``seed``, dealt round-robin."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.empty(len(y), dtype=torch.long)
    labels = y.cpu()
    for label in labels.unique().tolist():
        rows = (labels == label).nonzero().reshape(-1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        ids[rows] = torch.arange(len(rows)) % folds
    return ids.to(y.device)


def cross_validate_c(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    folds: int = 5,
    grid: Sequence[float] = C_GRID,
    seed: int = 0,
    class_weight: str = "none",
    label_smoothing: float = 0.0,
    log_level: int = logging.INFO,
) -> CvResult:
    """Chooses ``C`` by stratified ``folds``-fold cross-validation: the lowest pooled held-out log-loss.

    The held-out log-loss is plain cross-entropy (no smoothing, no class weights), so values compare across
    settings. One line per ``C`` is logged at ``log_level``.

    Raises:
        ValueError: A class with fewer rows than ``folds`` (say how many there are and what would work).
    """
    started = time.perf_counter()
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    present = counts[counts > 0]
    if int(present.min()) < folds:
        raise ValueError(
            f"{folds}-fold cross-validation of the L-BFGS penalty needs at least {folds} training images per class; "
            f"the smallest class has {int(present.min())}. Pass --cv-folds {max(2, int(present.min()))}, or a fixed "
            "--penalty-c."
        )
    ids = stratified_fold_ids(y, folds, seed)
    basis = Basis.of(x)  # one preconditioner for every fold and C (it speeds the fits, the optima are the same)
    z = basis.rotate(x)
    result = CvResult(folds=folds)
    warm: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * folds
    worse = 0
    for c in sorted(grid):
        tick = time.perf_counter()
        nll, hits = 0.0, 0
        oof = torch.empty(len(y), num_classes, dtype=torch.float32)
        for fold in range(folds):
            train, held = ids != fold, ids == fold
            weights = balanced_class_weights(y[train], num_classes) if class_weight == "balanced" else None
            weight, bias, _, _ = fit_logistic(
                x[train],
                y[train],
                num_classes=num_classes,
                c=c,
                class_weights=weights,
                label_smoothing=label_smoothing,
                init=warm[fold],
                basis=basis,
                rotated=z[train],
            )
            warm[fold] = (weight, bias)
            logits = x[held] @ weight.T + bias
            oof[held.cpu()] = logits.detach().float().cpu()
            nll += float(torch.nn.functional.cross_entropy(logits, y[held], reduction="sum"))
            hits += int((logits.argmax(1) == y[held]).sum())
        result.grid.append(float(c))
        result.log_loss.append(nll / len(y))
        result.top1.append(hits / len(y))
        logger.log(
            log_level,
            f"  C={c:g}: CV log-loss {result.log_loss[-1]:.4f}, CV top-1 {result.top1[-1]:.4f} "
            f"({time.perf_counter() - tick:.1f} s)",
        )
        best = min(range(len(result.grid)), key=result.log_loss.__getitem__)
        if best == len(result.grid) - 1:
            result.oof_logits = oof
        worse = 0 if best == len(result.grid) - 1 else worse + 1
        if worse >= _PATIENCE:
            break
    best = min(range(len(result.grid)), key=result.log_loss.__getitem__)
    result.best_c = result.grid[best]
    result.seconds = time.perf_counter() - started
    return result


def _metrics(head: torch.nn.Module, features: FeatureSet | None, loss_fn: torch.nn.Module) -> tuple[float, float]:
    if features is None or len(features) == 0:
        return float("nan"), float("nan")
    device = next(head.parameters()).device
    with torch.inference_mode():
        logits = head(features.features.to(device))
        labels = features.labels.to(device)
        return float(loss_fn(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def fit_lbfgs_head(
    model: DogClassifierNet,
    train: FeatureSet,
    valid: FeatureSet | None,
    config: TrainConfig,
    *,
    callbacks: Sequence[Callback] = (),
    extra: FeatureSet | None = None,
    log_level: int = logging.INFO,
    extra_smoothing: float = 0.0,
) -> tuple[list[dict[str, float]], LbfgsFit]:
    """Fits ``model.head`` (a single linear layer) on training features by L-BFGS; returns ``(history, fit)``.

    ``extra`` rows (degraded views of the training photos) join the final fit only: the penalty is cross-validated
    on ``train`` alone, so no photo is held out while a view of it is fitted on, and the final fit's C is scaled by
    ``photos / rows`` so that the views, copies of the photos rather than new ones, do not weaken the penalty the CV
    chose (the objective is the mean loss plus ``||W||^2 / (2 C n)``). With ``extra_smoothing`` the extra
    rows' targets are smoothed by it (``(1 - eps) * one-hot + eps / K``; the photos' by ``config.label_smoothing``):
    the head learns to be less sure of degraded photos only.

    The history has one entry, ``epoch`` 1, with the metrics a loop epoch has (``train_loss`` is the training
    objective's loss without the penalty, ``valid_loss`` plain cross-entropy); callbacks get ``on_train_start``,
    ``on_epoch_end`` with it, and ``on_train_end``, so the per-epoch log line is printed once. Nothing is
    checkpointed: the fit takes seconds, and a rerun (or ``--resume``) fits again from the cached features. The
    cross-validation lines and the summary are logged at ``log_level`` (a tuning trial's at DEBUG).

    Raises:
        ValueError: The head is not a single linear layer, or there are no training features.
    """
    layer = linear_layer(model.head)
    if layer is None:
        raise ValueError(
            "--head-solver lbfgs fits a single linear head; this head has a hidden layer or dropout. Use "
            "--head-solver loop, or drop --head-hidden/--dropout."
        )
    if len(train) == 0:
        raise ValueError("There are no training features to fit the head on.")
    started = time.perf_counter()
    device = resolve_device(config.device)
    model.to(device)
    x, y = train.features.to(device), train.labels.to(device)
    num_classes = layer.out_features
    cv = None
    c = config.penalty_c
    if c is None:
        logger.log(
            log_level,
            f"Choosing the L2 penalty C by {config.cv_folds}-fold cross-validation on {len(y)} training images:",
        )
        cv = cross_validate_c(
            x,
            y,
            num_classes=num_classes,
            folds=config.cv_folds,
            seed=config.seed,
            class_weight=config.class_weight,
            label_smoothing=config.label_smoothing,
            log_level=log_level,
        )
        c = cv.best_c
    extra_rows = extra is not None and len(extra) > 0
    labels = torch.cat([y, extra.labels.to(device)]) if extra_rows else y  # type: ignore[union-attr]
    weights = balanced_class_weights(labels, num_classes) if config.class_weight == "balanced" else None
    targets, smoothing, final_c = labels, config.label_smoothing, None
    if extra_rows:
        final_c = c * len(x) / len(labels)
        x = torch.cat([x, extra.features.to(device)])  # type: ignore[union-attr]
        if extra_smoothing:  # class probabilities: the photos' smoothed by label_smoothing, the views' by more
            rows = [_smoothed(y, num_classes, smoothing), _smoothed(extra.labels, num_classes, extra_smoothing)]  # type: ignore[union-attr]
            targets, smoothing = torch.cat(rows).to(device, x.dtype), 0.0
    weight, bias, iterations, converged = fit_logistic(
        x, targets, num_classes=num_classes, c=final_c or c, class_weights=weights, label_smoothing=smoothing
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    fit = LbfgsFit(
        c=float(c),
        chosen_by="cv" if cv is not None else "given",
        iterations=iterations,
        converged=converged,
        seconds=time.perf_counter() - started,
        cv=cv,
        final_c=final_c,
    )
    logger.log(log_level, fit.summary())
    return _report(model, train, valid, config, fit, callbacks), fit


def _smoothed(labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """``(N, K)`` target probabilities: ``(1 - eps) * one_hot(labels) + eps / K``."""
    one_hot = torch.nn.functional.one_hot(labels.long().cpu(), num_classes).double()
    return one_hot * (1.0 - eps) + eps / num_classes


def _report(
    model: DogClassifierNet,
    train: FeatureSet,
    valid: FeatureSet | None,
    config: TrainConfig,
    fit: LbfgsFit,
    callbacks: Sequence[Callback],
) -> list[dict[str, float]]:
    """The one history entry, through the callbacks as a loop epoch would go."""
    loss_fn = make_loss(config, train.labels, linear_layer(model.head).out_features)  # type: ignore[union-attr]
    model.eval()
    train_loss, train_top1 = _metrics(model.head, train, loss_fn.to(train.features.device))
    valid_loss, valid_top1 = _metrics(model.head, valid, torch.nn.CrossEntropyLoss())
    hooks = CallbackList(callbacks)
    state = TrainState(
        model=model,
        optimizer=torch.optim.LBFGS(model.head.parameters()),
        loss_fn=loss_fn,
        config=config,
        num_batches=1,
        num_eval_batches=1 if valid is not None and len(valid) else 0,
        solver="lbfgs",
    )
    hooks.on_train_start(state)
    state.epoch, state.step = 1, fit.iterations
    metrics = {
        "epoch": 1.0,
        "train_loss": train_loss,
        "train_top1": train_top1,
        "valid_loss": valid_loss,
        "valid_top1": valid_top1,
        "seconds": fit.seconds,
    }
    state.history.append(metrics)
    hooks.on_epoch_end(state, metrics)
    hooks.on_train_end(state)
    if not all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train")):
        raise FloatingPointError(f"The L-BFGS fit gave a non-finite training loss ({train_loss}); check the features.")
    return state.history


class LbfgsHeadFitter:
    """What :func:`dogclf.train` runs in place of a :class:`~dogclf.training.loop.Trainer` for L-BFGS.

    It has the trainer's ``device``, ``fit()``, ``kept_epoch`` and ``stopped_early``; :attr:`fit_info` after
    fitting.

    Args:
        model: The model; its head must be a single linear layer.
        train: Training features.
        valid: Validation features, or ``None``.
        config: Hyperparameters (``penalty_c``, ``cv_folds``, ``class_weight``, ``label_smoothing``, ``seed``,
            ``device``).
        callbacks: Training callbacks.
        extra: Rows for the final fit only (see :func:`fit_lbfgs_head`).
        extra_smoothing: Label smoothing of the extra rows' targets (see :func:`fit_lbfgs_head`).
    """

    kept_epoch = 1
    stopped_early = None

    def __init__(
        self,
        model: DogClassifierNet,
        train: FeatureSet,
        valid: FeatureSet | None,
        config: TrainConfig,
        *,
        callbacks: Sequence[Callback] = (),
        extra: FeatureSet | None = None,
        extra_smoothing: float = 0.0,
    ) -> None:
        self.model = model
        self.extra = extra
        self.extra_smoothing = extra_smoothing
        self.train = train
        self.valid = valid
        self.config = config
        self.callbacks = list(callbacks)
        self.device = resolve_device(config.device)
        self.fit_info: LbfgsFit | None = None

    def fit(self) -> list[dict[str, float]]:
        """Fits the head; returns the one-entry history."""
        history, self.fit_info = fit_lbfgs_head(
            self.model,
            self.train,
            self.valid,
            self.config,
            callbacks=self.callbacks,
            extra=self.extra,
            extra_smoothing=self.extra_smoothing,
        )
        return history
