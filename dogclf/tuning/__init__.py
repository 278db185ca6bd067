"""Hyperparameter tuning: a declarative search space and a resumable local Optuna study (``dogclf tune``).

Modules: :mod:`.space` (the search space), :mod:`.objective` (one trial: a head fitted on the cached features),
:mod:`.study` (:func:`tune`), :mod:`.report` (``best_params.json``, ``trials.csv``, ``history.png``) and :mod:`.cli`
(the ``dogclf tune`` parser and run).

Importing this package is cheap: Optuna, torch and matplotlib are imported only when :func:`tune` runs.
"""

from __future__ import annotations

from dogclf.tuning.space import (
    DEFAULT_SPACE,
    TUNABLE,
    Categorical,
    FloatRange,
    IntRange,
    SearchSpace,
    SearchSpaceError,
    load_space,
)

__all__ = [
    "DEFAULT_SPACE",
    "TUNABLE",
    "Categorical",
    "FloatRange",
    "IntRange",
    "SearchSpace",
    "SearchSpaceError",
    "TuneResult",
    "load_space",
    "tune",
]


def __getattr__(name: str) -> object:
    if name in ("tune", "TuneResult"):
        from dogclf.tuning import study

        return getattr(study, name)
    raise AttributeError(f"module 'dogclf.tuning' has no attribute {name!r}")
