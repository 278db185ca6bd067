"""One tuning trial: sample the space, train a fresh head on the shared features, report every epoch.

What all trials share (the features, the loaded backbone, the RNG state a head starts from) is prepared once by
:func:`prepare_trials`. Optuna and torch are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dogclf.tuning.space import LOOP_ONLY, Categorical, FloatRange, IntRange, Param, SearchSpace

if TYPE_CHECKING:
    import optuna

    from dogclf.backbones.spec import BackboneSpec
    from dogclf.features.pipeline import FeatureSet

__all__ = [
    "FIXED_DEFAULTS",
    "Objective",
    "SharedData",
    "default_params",
    "head_config",
    "hyperparameters",
    "prepare_trials",
    "suggest",
    "train_config",
]

FIXED_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # A space without head_solver searches the epoch loop: its trials (and the defaults trial) use the loop.
        "head_solver": "loop",
        "lr": 1e-3,
        "batch_size": 32,
        "epochs": 5,
        "weight_decay": 0.0,
        "dropout": 0.0,
        "head_hidden": 0,
        "optimizer": "adam",
        "lr_schedule": "constant",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        "class_weight": "none",
    }
)
"""What a hyperparameter the space leaves out is held at: the ``dogclf train`` defaults (of the loop)."""

_TRAIN_DEFAULT_SOLVER = "lbfgs"  # what `dogclf train` fits a linear head on features with


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Samples the hyperparameters of ``space`` through the trial (the space's one translation into Optuna).

    ``head_solver`` comes first; when it is ``lbfgs`` the loop-only hyperparameters (:data:`LOOP_ONLY`) are not
    sampled, since that trial does not use them.
    """
    values: dict[str, Any] = {}
    names = sorted(space.params, key=lambda name: name != "head_solver")
    for name in names:
        if name in LOOP_ONLY and values.get("head_solver") == "lbfgs":
            continue
        values[name] = _suggest_one(trial, name, space.params[name])
    return values


def _suggest_one(trial: optuna.Trial, name: str, param: Param) -> Any:
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, step=param.step)
    return trial.suggest_categorical(name, list(param.choices))


def default_params(space: SearchSpace) -> dict[str, Any]:
    """The ``dogclf train`` defaults as a point of ``space``: the study's first trial, so it never returns worse.

    With ``head_solver`` in the space that is ``{"head_solver": "lbfgs"}`` (train's default for a linear head on
    features). Otherwise the loop's defaults, each moved to the nearest value the space holds (weight decay 0 becomes
    the low end of a log range, e.g. 1e-6).
    """
    if "head_solver" in space.params and space.params["head_solver"].contains(_TRAIN_DEFAULT_SOLVER):
        return {"head_solver": _TRAIN_DEFAULT_SOLVER}
    return {name: _nearest(param, FIXED_DEFAULTS[name]) for name, param in space.params.items()}


def _nearest(param: Param, value: Any) -> Any:
    if param.contains(value):
        return value
    if isinstance(param, Categorical):
        numbers = [c for c in param.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and numbers:
            return min(numbers, key=lambda c: abs(c - value))
        return param.choices[0]
    clipped = min(max(value, param.low), param.high)
    if isinstance(param, IntRange):
        clipped = param.low + round((clipped - param.low) / param.step) * param.step
    return clipped


def hyperparameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of a run: the sampled ones over the fixed defaults (an L-BFGS run has no loop ones)."""
    values = {**FIXED_DEFAULTS, **params}
    if values["head_solver"] == "lbfgs":
        values = {k: v for k, v in values.items() if k not in LOOP_ONLY}
    return values


def train_config(values: Mapping[str, Any], *, seed: int, device: str, num_workers: int | None = None) -> Any:
    """The :class:`~dogclf.training.config.TrainConfig` of a trial's :func:`hyperparameters` (and --train-best's)."""
    from dogclf.training.config import TrainConfig

    v = {**FIXED_DEFAULTS, **values}
    return TrainConfig(
        head_solver=str(v["head_solver"]),
        epochs=int(v["epochs"]),
        batch_size=int(v["batch_size"]),
        lr=float(v["lr"]),
        weight_decay=float(v["weight_decay"]),
        optimizer=str(v["optimizer"]),
        lr_schedule=str(v["lr_schedule"]),
        warmup_epochs=float(v["warmup_epochs"]),
        label_smoothing=float(v["label_smoothing"]),
        class_weight=str(v["class_weight"]),
        seed=seed,
        device=device,
        num_workers=num_workers,
    )


def head_config(values: Mapping[str, Any]) -> Any:
    """The :class:`~dogclf.model.HeadConfig` of a trial's :func:`hyperparameters`."""
    from dogclf.model import HeadConfig

    v = {**FIXED_DEFAULTS, **values}
    return HeadConfig(hidden=int(v["head_hidden"]), dropout=float(v["dropout"]))


@dataclass
class SharedData:
    """What every trial shares: the features, the loaded backbone, and the RNG state a fresh head starts from."""

    train: FeatureSet
    valid: FeatureSet
    backbone: Any
    num_features: int
    num_classes: int
    torch_rng: Any
    python_rng: Any


class Objective:
    """Fits one head per trial; returns its metric (the kept epoch's for the loop, the fit's for L-BFGS)."""

    def __init__(self, shared: SharedData, *, space: SearchSpace, metric: str, seed: int, device: str) -> None:
        self.shared = shared
        self.space = space
        self.metric = metric
        self.seed = seed
        self.device = device
        self._lbfgs_final: dict[str, float] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        """Runs the trial; a failure's reason is stored on it (``error``) before it propagates to Optuna."""
        import optuna

        try:
            return self._run(trial, suggest(trial, self.space))
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _run(self, trial: optuna.Trial, params: dict[str, Any]) -> float:
        import torch

        from dogclf.model import DogClassifierNet, build_head

        values = hyperparameters(params)
        config = train_config(values, seed=self.seed, device=self.device)
        # The RNG exactly as `dogclf train` has it when it builds the head, so --train-best repeats the trial.
        torch.manual_seed(self.seed)
        torch.set_rng_state(self.shared.torch_rng)
        random.setstate(self.shared.python_rng)
        head = build_head(self.shared.num_features, self.shared.num_classes, head_config(values))
        model = DogClassifierNet(self.shared.backbone, head, frozen=True)
        if config.head_solver == "lbfgs":
            final = self._lbfgs(model, config)
            trial.report(float(final[self.metric]), 1)
        else:
            final = self._loop(trial, model, config)
        trial.set_user_attr(
            "final", {k: float(final[k]) for k in ("train_loss", "train_top1", "valid_loss", "valid_top1")}
        )
        return float(final[self.metric])

    def _lbfgs(self, model: Any, config: Any) -> dict[str, float]:
        """An L-BFGS trial: the penalty cross-validated on the training features. Deterministic, so fitted once."""
        from dogclf.training.lbfgs import fit_lbfgs_head

        if self._lbfgs_final is None:
            # The trial's line says how it went; the fit's own lines (train prints them) stay at DEBUG.
            history, _ = fit_lbfgs_head(model, self.shared.train, self.shared.valid, config, log_level=logging.DEBUG)
            self._lbfgs_final = history[-1]
        return self._lbfgs_final

    def _loop(self, trial: optuna.Trial, model: Any, config: Any) -> dict[str, float]:
        """A loop trial, reporting every epoch to the pruner; worth the kept epoch's metrics (``--keep best``)."""
        import optuna

        from dogclf.training.head import fit_head

        def report(metrics: dict[str, float]) -> None:
            epoch = int(metrics["epoch"])
            value = float(metrics[self.metric])
            if not math.isfinite(value):
                raise FloatingPointError(f"{self.metric} is {value} at epoch {epoch}: the training loss diverged")
            trial.report(value, epoch)
            if epoch < config.epochs and trial.should_prune():  # a trial that trained to the end completes
                raise optuna.TrialPruned(f"pruned after epoch {epoch} with {self.metric}={value:.4f}")

        history = fit_head(model, self.shared.train, self.shared.valid, config, on_epoch=report)
        scored = [h for h in history if math.isfinite(h["valid_loss"])]
        return min(scored, key=lambda h: h["valid_loss"]) if config.keep == "best" and scored else history[-1]


def prepare_trials(
    splits: Any,
    spec: BackboneSpec,
    *,
    weights: Any,
    seed: int,
    cache_dir: Path | None,
    precision: str,
    extract_batch_size: int,
    engine: str = "auto",
    device: str,
    num_workers: int | None,
    progress: bool | None,
) -> SharedData:
    """Builds the backbone and extracts (or loads from the cache) the train and valid features, once for all trials.

    The RNG is seeded as ``dogclf train`` seeds it before building its model, and its state after the backbone is
    built is kept: every trial's head starts from it, so ``--train-best`` trains the best trial's model again.
    """
    import torch

    from dogclf.backbones.weights import build_backbone, weights_label
    from dogclf.features.extract import ExtractOptions
    from dogclf.features.pipeline import prepare_features

    torch.manual_seed(seed)
    random.seed(seed)
    backbone = build_backbone(spec, weights)
    torch_rng, python_rng = torch.get_rng_state(), random.getstate()
    options = ExtractOptions(
        batch_size=extract_batch_size, num_workers=num_workers, precision=precision, device=device, engine=engine
    )
    # Tuning never looks at the test split, so its images are not extracted here.
    features = prepare_features(
        dataclasses.replace(splits, test=[]),
        spec,
        backbone,
        weights_label=weights_label(weights),
        cache_dir=cache_dir,
        options=options,
        progress=progress,
    )
    return SharedData(
        train=features["train"],
        valid=features["valid"],
        backbone=backbone,
        num_features=spec.num_features,
        num_classes=len(splits.classes),
        torch_rng=torch_rng,
        python_rng=python_rng,
    )
