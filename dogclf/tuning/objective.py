"""One tuning trial: sample the space, train a fresh head on the shared features, report every epoch.

What all trials share (the features, the loaded backbone, the RNG state a head starts from) is prepared once by
:func:`prepare_trials`. Optuna and torch are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dogclf.tuning.space import Categorical, FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    import optuna

    from dogclf.backbones.spec import BackboneSpec
    from dogclf.features.pipeline import FeatureSet

__all__ = ["FIXED_DEFAULTS", "Objective", "SharedData", "hyperparameters", "prepare_trials", "suggest"]

FIXED_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"lr": 1e-3, "batch_size": 32, "epochs": 5, "weight_decay": 0.0, "dropout": 0.0, "head_hidden": 0}
)
"""What a hyperparameter the space leaves out is held at: the ``dogclf train`` defaults."""


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Samples every hyperparameter of ``space`` through the trial (the space's one translation into Optuna)."""
    values: dict[str, Any] = {}
    for name, param in space.params.items():
        if isinstance(param, FloatRange):
            values[name] = trial.suggest_float(name, param.low, param.high, log=param.log)
        elif isinstance(param, IntRange):
            values[name] = trial.suggest_int(name, param.low, param.high, step=param.step)
        elif isinstance(param, Categorical):
            values[name] = trial.suggest_categorical(name, list(param.choices))
    return values


def hyperparameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of a run: the sampled ones over the fixed defaults."""
    return {**FIXED_DEFAULTS, **params}


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
    """Trains one head per trial; returns the last epoch's metric."""

    def __init__(self, shared: SharedData, *, space: SearchSpace, metric: str, seed: int, device: str) -> None:
        self.shared = shared
        self.space = space
        self.metric = metric
        self.seed = seed
        self.device = device

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
        import optuna
        import torch

        from dogclf.model import DogClassifierNet, HeadConfig, build_head
        from dogclf.training.config import TrainConfig
        from dogclf.training.head import fit_head

        values = hyperparameters(params)
        config = TrainConfig(
            epochs=int(values["epochs"]),
            batch_size=int(values["batch_size"]),
            lr=float(values["lr"]),
            weight_decay=float(values["weight_decay"]),
            seed=self.seed,
            device=self.device,
        )
        head_config = HeadConfig(hidden=int(values["head_hidden"]), dropout=float(values["dropout"]))
        # The RNG exactly as `dogclf train` has it when it builds the head, so --train-best repeats the trial.
        torch.manual_seed(self.seed)
        torch.set_rng_state(self.shared.torch_rng)
        random.setstate(self.shared.python_rng)
        head = build_head(self.shared.num_features, self.shared.num_classes, head_config)
        model = DogClassifierNet(self.shared.backbone, head, frozen=True)

        def report(metrics: dict[str, float]) -> None:
            epoch = int(metrics["epoch"])
            value = float(metrics[self.metric])
            if not math.isfinite(value):
                raise FloatingPointError(f"{self.metric} is {value} at epoch {epoch}: the training loss diverged")
            trial.report(value, epoch)
            if epoch < config.epochs and trial.should_prune():  # a trial that trained to the end completes
                raise optuna.TrialPruned(f"pruned after epoch {epoch} with {self.metric}={value:.4f}")

        history = fit_head(model, self.shared.train, self.shared.valid, config, on_epoch=report)
        final = history[-1]
        trial.set_user_attr(
            "final", {k: float(final[k]) for k in ("train_loss", "train_top1", "valid_loss", "valid_top1")}
        )
        return float(final[self.metric])


def prepare_trials(
    splits: Any,
    spec: BackboneSpec,
    *,
    weights: Any,
    seed: int,
    cache_dir: Path | None,
    precision: str,
    extract_batch_size: int,
    device: str,
    num_workers: int | None,
    log: Callable[[str], None],
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
    options = ExtractOptions(batch_size=extract_batch_size, num_workers=num_workers, precision=precision, device=device)
    # Tuning never looks at the test split, so its images are not extracted here.
    features = prepare_features(
        dataclasses.replace(splits, test=[]),
        spec,
        backbone,
        weights_label=weights_label(weights),
        cache_dir=cache_dir,
        options=options,
        log=log,
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
