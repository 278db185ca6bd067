"""Which head generalises: dogclf's heads against scikit-learn's ``LogisticRegressionCV``, by k-fold cross-validation.

All heads are fitted on the **same** cached ``efficientnet_lite0`` features of ``../shared/data/imagewoof/train``
(8,687 photos, 10 breeds). The photos are split into ``--folds`` stratified outer folds; for each, the other folds are
what a user would hand ``dogclf train --valid-fraction 0.2``: 80% of them train the head and 20% are its validation
split (keep-best, tuning, calibration), and the held-out outer fold scores it. Every head sees exactly the same
train / valid / test rows in every fold:

* ``Adam loop, keep last``: the loop as it was (5 epochs, batch 32, Adam lr 1e-3, the last epoch saved);
* ``Adam loop, keep best``: the same with ``--keep best`` (the new loop default);
* ``L-BFGS + CV``: ``--head-solver lbfgs`` (the new default), C chosen by 5-fold CV on the 80% training part;
* ``tuned``: ``dogclf tune``'s objective and default space (defaults trial first, TPE, median pruning,
  ``--trials``) on the 80/20 split, then the best values refitted as ``--train-best`` does;
* ``LogisticRegressionCV``: scikit-learn, ``Cs`` = the same grid, ``cv=5``, lbfgs, ``max_iter=1000``, default
  scoring (accuracy), refitted on the 80% training part, as a competent user would run it.

Printed: mean held-out top-1 and log-loss over the folds (with the spread), the mean fit time, and each head's
difference to ``LogisticRegressionCV`` in held-out photos. Caveat: these are ImageNet training photos, which the
backbone has seen, so this same-pool protocol favours weak penalties; it cannot show how heads do on photos the
backbone never saw (none are available here).

    python bench/heads.py [--folds 5] [--trials 20] [--cache-dir DIR] [--device auto]

Verify quickly with ``--subset 600 --folds 2 --trials 3``. Needs the ``bench`` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine  # bench/ is on sys.path when a script runs
from _features import imagewoof_features

HEADS = ("Adam loop, keep last", "Adam loop, keep best", "L-BFGS + CV", "tuned", "LogisticRegressionCV")


def _folds(labels: Any, folds: int, seed: int) -> Any:
    from dogclf.training.lbfgs import stratified_fold_ids

    return stratified_fold_ids(labels, folds, seed)


def _split_valid(labels: Any, rows: Any, seed: int) -> tuple[Any, Any]:
    """``rows`` split 80/20 per class (seeded), as ``--valid-fraction 0.2`` does."""

    ids = _folds(labels[rows], 5, seed)
    return rows[ids != 0], rows[ids == 0]


def _model(width: int, classes: int, head: Any = None) -> Any:
    import torch

    from dogclf.model import DogClassifierNet, HeadConfig, build_head

    torch.manual_seed(0)
    return DogClassifierNet(torch.nn.Identity(), build_head(width, classes, head or HeadConfig()), frozen=True)


def _score(model: Any, x: Any, y: Any) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model.head(x)
    return float((logits.argmax(1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))


def _loop(keep: str) -> Callable[..., Any]:
    def fit(train: Any, valid: Any, args: argparse.Namespace) -> tuple[Any, str]:
        from dogclf.training.config import TrainConfig
        from dogclf.training.head import fit_head

        model = _model(train.features.shape[1], args.classes)
        config = TrainConfig(head_solver="loop", keep=keep, device=args.device, seed=args.seed)
        history = fit_head(model, train, valid, config)
        return model, f"{len(history)} epochs"

    return fit


def _lbfgs(train: Any, valid: Any, args: argparse.Namespace) -> tuple[Any, str]:
    from dogclf.training.config import TrainConfig
    from dogclf.training.lbfgs import fit_lbfgs_head

    model = _model(train.features.shape[1], args.classes)
    _, fit = fit_lbfgs_head(model, train, valid, TrainConfig(device=args.device, seed=args.seed))
    return model, f"C={fit.c:g}"


def _tuned(train: Any, valid: Any, args: argparse.Namespace) -> tuple[Any, str]:
    import optuna
    import torch

    from dogclf.tuning.objective import (
        Objective,
        SharedData,
        default_params,
        head_config,
        hyperparameters,
        train_config,
    )
    from dogclf.tuning.space import DEFAULT_SPACE

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    shared = SharedData(
        train=train,
        valid=valid,
        backbone=torch.nn.Identity(),
        num_features=train.features.shape[1],
        num_classes=args.classes,
        torch_rng=torch.get_rng_state(),
        python_rng=random.getstate(),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    study.enqueue_trial(default_params(DEFAULT_SPACE))
    objective = Objective(shared, space=DEFAULT_SPACE, metric="valid_top1", seed=args.seed, device=args.device)
    study.optimize(objective, n_trials=args.trials, catch=(Exception,))
    values = hyperparameters(study.best_trial.params)
    config = train_config(values, seed=args.seed, device=args.device)
    model = _model(train.features.shape[1], args.classes, head_config(values))
    if config.head_solver == "lbfgs":
        from dogclf.training.lbfgs import fit_lbfgs_head

        fit_lbfgs_head(model, train, valid, config)
    else:
        from dogclf.training.head import fit_head

        fit_head(model, train, valid, config)
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_trial.params.items())
    return model, shown


def _sklearn(train: Any, valid: Any, args: argparse.Namespace) -> tuple[Any, str]:
    import torch
    from sklearn.linear_model import LogisticRegressionCV

    from dogclf.training.lbfgs import C_GRID

    fitted = LogisticRegressionCV(Cs=list(C_GRID), cv=5, max_iter=1000, random_state=args.seed)
    fitted.fit(train.features.numpy(), train.labels.numpy())
    model = _model(train.features.shape[1], args.classes)
    with torch.no_grad():
        model.head[0].weight.copy_(torch.from_numpy(fitted.coef_))
        model.head[0].bias.copy_(torch.from_numpy(fitted.intercept_))
    return model, f"C={float(fitted.C_[0]):g}"


FITS: dict[str, Callable[..., Any]] = {
    "Adam loop, keep last": _loop("last"),
    "Adam loop, keep best": _loop("best"),
    "L-BFGS + CV": _lbfgs,
    "tuned": _tuned,
    "LogisticRegressionCV": _sklearn,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5, help="outer folds (default 5)")
    parser.add_argument("--trials", type=int, default=20, help="tuning trials per fold (default 20)")
    parser.add_argument("--subset", type=int, default=None, help="use this many photos (stratified), to check quickly")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: dogclf's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import os

    import torch

    from dogclf.features.cache import default_cache_dir
    from dogclf.features.pipeline import FeatureSet

    cache = args.cache_dir or default_cache_dir(os.environ)
    x, y, classes = imagewoof_features(cache, args.device)
    if args.subset:
        keep = torch.cat([(y == c).nonzero().reshape(-1)[: args.subset // len(classes)] for c in range(len(classes))])
        x, y = x[keep], y[keep]
    args.classes = len(classes)
    outer = _folds(y, args.folds, args.seed)
    results: dict[str, list[tuple[float, float, float, str]]] = {name: [] for name in HEADS}
    for fold in range(args.folds):
        rest = (outer != fold).nonzero().reshape(-1)
        train_rows, valid_rows = _split_valid(y, rest, args.seed + fold)
        test_rows = (outer == fold).nonzero().reshape(-1)
        train, valid = FeatureSet(x[train_rows], y[train_rows]), FeatureSet(x[valid_rows], y[valid_rows])
        print(f"fold {fold + 1}/{args.folds}: {len(train_rows)} train, {len(valid_rows)} valid, {len(test_rows)} test")
        for name in HEADS:
            started = time.perf_counter()
            model, note = FITS[name](train, valid, args)
            seconds = time.perf_counter() - started
            top1, nll = _score(model, x[test_rows], y[test_rows])
            results[name].append((top1, nll, seconds, note))
            print(f"  {name:<22} top-1 {top1:.4f}  log-loss {nll:.4f}  {seconds:6.1f} s  {note}", flush=True)
    _table(results, n=len(y), folds=args.folds)
    print(f"\nCommand: python {shlex.join(['bench/heads.py', *sys.argv[1:]])}")
    print(f"Machine: {machine(args.device)}")
    return 0


def _table(results: dict[str, list[tuple[float, float, float, str]]], *, n: int, folds: int) -> None:
    reference = [r[0] for r in results["LogisticRegressionCV"]]
    print(f"\n{n} photos, {folds}-fold outer CV (each fold: 80% of the rest trains, 20% validates).\n")
    print("| head | held-out top-1 | log-loss | vs LogisticRegressionCV (photos per 1,000) | fit time (s) | chosen |")
    print("|---|---:|---:|---:|---:|---|")
    for name, rows in results.items():
        top1 = [r[0] for r in rows]
        nll = [r[1] for r in rows]
        diff = [1000 * (a - b) for a, b in zip(top1, reference, strict=True)]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        notes = "; ".join(r[3] for r in rows)
        print(
            f"| {name} | {statistics.mean(top1):.2%} ± {spread:.2%} | {statistics.mean(nll):.4f} | "
            f"{statistics.mean(diff):+.1f} | {statistics.mean(r[2] for r in rows):.1f} | {notes} |"
        )


if __name__ == "__main__":
    sys.exit(main())
