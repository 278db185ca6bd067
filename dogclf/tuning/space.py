"""A declarative hyperparameter search space, free of any tuner's types.

The same :class:`SearchSpace` drives local tuning (:mod:`dogclf.tuning.study`, which turns it into Optuna
distributions) and can be turned into SageMaker tuning ranges, one to one:

========================================  =========================================================================
dogclf                                    SageMaker (``sagemaker.tuner``)
========================================  =========================================================================
``FloatRange(low, high)``                 ``ContinuousParameter(low, high, scaling_type="Linear")``
``FloatRange(low, high, log=True)``       ``ContinuousParameter(low, high, scaling_type="Logarithmic")``
``IntRange(low, high)`` (step 1)          ``IntegerParameter(low, high, scaling_type="Linear")``
``Categorical(choices)``                  ``CategoricalParameter([str(c) for c in choices])``
========================================  =========================================================================

SageMaker has no integer step, so an ``IntRange`` with ``step > 1`` has no SageMaker form; a converter should
refuse it (or use a ``Categorical`` of the values).

Only the hyperparameters in :data:`TUNABLE` can be searched; a space that leaves one out keeps that
hyperparameter at its ``dogclf train`` default. The JSON form (``--space FILE``) is one object, name to range::

    {
      "head_solver": {"type": "categorical", "choices": ["lbfgs", "loop"]},
      "lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": true},
      "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128, 256]},
      "epochs": {"type": "int", "low": 2, "high": 15},
      "weight_decay": {"type": "float", "low": 1e-06, "high": 1.0, "log": true},
      "dropout": {"type": "float", "low": 0.0, "high": 0.5}
    }

The loop's hyperparameters (:data:`LOOP_ONLY`) are conditional on ``head_solver``: a trial that picks ``lbfgs``
samples none of them (its penalty is cross-validated inside the trial). A space without ``head_solver`` searches the
loop.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias, Union

from dogclf.errors import DogclfError

__all__ = [
    "DEFAULT_SPACE",
    "LOOP_ONLY",
    "TUNABLE",
    "Categorical",
    "FloatRange",
    "IntRange",
    "Param",
    "SearchSpace",
    "SEED_INCEPTION_SPACE",
    "SEED_RESNET18_SPACE",
    "SPACE_PRESETS",
    "SearchSpaceError",
    "load_space",
    "resolve_space",
]


class SearchSpaceError(DogclfError, ValueError):
    """A search space (or its JSON file) that cannot be used."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FloatRange:
    """A real-valued range ``[low, high]``, sampled uniformly or, with ``log``, uniformly in log space.

    Attributes:
        low: Smallest value.
        high: Largest value (greater than ``low``).
        log: Sample on a log scale (needs ``low > 0``); right for learning rates and weight decay.
    """

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (_is_number(self.low) and _is_number(self.high)):
            raise SearchSpaceError(f"FloatRange needs finite numbers, got low={self.low!r}, high={self.high!r}")
        if not self.low < self.high:
            raise SearchSpaceError(
                f"FloatRange needs low < high, got low={self.low!r}, high={self.high!r}; "
                "for a fixed value use Categorical([value])"
            )
        if not isinstance(self.log, bool):
            raise SearchSpaceError(f"FloatRange log must be true or false, got {self.log!r}")
        if self.log and self.low <= 0:
            raise SearchSpaceError(f"A log-scale FloatRange needs low > 0, got low={self.low!r}")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the range."""
        return _is_number(value) and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntRange:
    """An integer range ``low, low + step, ..., high``.

    Attributes:
        low: Smallest value.
        high: Largest value (``high - low`` must be a multiple of ``step``).
        step: Spacing of the values (SageMaker supports only 1).
    """

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SearchSpaceError(f"IntRange {name} must be an integer, got {value!r}")
        if self.step < 1:
            raise SearchSpaceError(f"IntRange step must be >= 1, got {self.step}")
        if not self.low < self.high:
            raise SearchSpaceError(
                f"IntRange needs low < high, got low={self.low}, high={self.high}; "
                "for a fixed value use Categorical([value])"
            )
        if (self.high - self.low) % self.step:
            raise SearchSpaceError(
                f"IntRange high - low must be a multiple of step, got low={self.low}, high={self.high}, "
                f"step={self.step}; e.g. high={self.high - (self.high - self.low) % self.step}"
            )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the range's values."""
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step}


def _same_choice(a: Any, b: Any) -> bool:
    """Equality that keeps booleans, strings and numbers apart (``True != 1``, ``"1" != 1``, ``1 == 1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return _is_number(a) and _is_number(b) and a == b


@dataclass(frozen=True)
class Categorical:
    """A choice among a few values (numbers, strings or booleans).

    Attributes:
        choices: The distinct values, in order.
    """

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not hasattr(self.choices, "__iter__"):
            raise SearchSpaceError(f"Categorical choices must be a list of values, got {self.choices!r}")
        choices = tuple(self.choices)
        if not choices:
            raise SearchSpaceError("Categorical needs at least one choice")
        for choice in choices:
            if not (isinstance(choice, (bool, str)) or _is_number(choice)):
                raise SearchSpaceError(
                    f"Categorical choices must be finite numbers, strings or booleans, got {choice!r}"
                )
        if any(_same_choice(a, b) for i, a in enumerate(choices) for b in choices[i + 1 :]):
            raise SearchSpaceError(f"Categorical choices must be distinct, got {list(choices)!r}")
        object.__setattr__(self, "choices", choices)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices (``True`` is not ``1``)."""
        return any(_same_choice(value, c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "categorical", "choices": list(self.choices)}


Param: TypeAlias = Union[FloatRange, IntRange, Categorical]  # noqa: UP007 (dataclass fields need it on 3.10)


@dataclass(frozen=True)
class _Tunable:
    kind: str  # "float", "int" or "choice": what a sampled value must be
    check: Callable[[Any], bool]
    rule: str
    help: str


def _choice(choices: tuple[str, ...], help: str) -> _Tunable:
    return _Tunable("choice", lambda v: v in choices, f"one of {', '.join(choices)}", help)


TUNABLE: Mapping[str, _Tunable] = MappingProxyType(
    {
        "lr": _Tunable("float", lambda v: v > 0, "> 0", "Adam learning rate of the head"),
        "batch_size": _Tunable("int", lambda v: v >= 1, ">= 1", "feature rows per optimizer step"),
        "epochs": _Tunable("int", lambda v: v >= 1, ">= 1", "passes over the training features"),
        "weight_decay": _Tunable("float", lambda v: v >= 0, ">= 0", "Adam weight decay"),
        "dropout": _Tunable("float", lambda v: 0 <= v < 1, "in [0, 1)", "head dropout probability"),
        "head_hidden": _Tunable("int", lambda v: v >= 0, ">= 0", "hidden head width (0: linear head)"),
        "head_solver": _choice(("lbfgs", "loop"), "how the head is fitted"),
        "optimizer": _choice(("adam", "adamw", "sgd"), "the loop's optimizer"),
        "lr_schedule": _choice(("constant", "cosine"), "the loop's learning-rate schedule"),
        "warmup_epochs": _Tunable("float", lambda v: v >= 0, ">= 0", "epochs of learning-rate warm-up"),
        "label_smoothing": _Tunable("float", lambda v: 0 <= v < 1, "in [0, 1)", "label smoothing of the loss"),
        "class_weight": _choice(("none", "balanced"), "class weights of the loss"),
    }
)
"""The hyperparameters a space may search: name -> (value kind, allowed values, meaning)."""

LOOP_ONLY = frozenset(
    {
        "lr",
        "batch_size",
        "epochs",
        "weight_decay",
        "dropout",
        "head_hidden",
        "optimizer",
        "lr_schedule",
        "warmup_epochs",
    }
)
"""What only the epoch loop uses: a trial whose ``head_solver`` is ``lbfgs`` samples none of these."""


def _endpoints(param: Param) -> list[Any]:
    if isinstance(param, Categorical):
        return list(param.choices)
    return [param.low, param.high]


def _check_param(name: str, param: Any) -> None:
    if name not in TUNABLE:
        raise SearchSpaceError(
            f"Unknown hyperparameter {name!r} in the search space; tunable ones: {', '.join(TUNABLE)}"
        )
    if not isinstance(param, (FloatRange, IntRange, Categorical)):
        raise SearchSpaceError(
            f"Hyperparameter {name!r} must be a FloatRange, IntRange or Categorical, got {type(param).__name__}"
        )
    rule = TUNABLE[name]
    if rule.kind == "int" and isinstance(param, FloatRange):
        raise SearchSpaceError(f"Hyperparameter {name!r} takes integers; use an IntRange or a Categorical of ints")
    if rule.kind == "choice":
        if not isinstance(param, Categorical) or not all(isinstance(v, str) and rule.check(v) for v in param.choices):
            raise SearchSpaceError(f"Hyperparameter {name!r} ({rule.help}) must be a Categorical of {rule.rule}")
        return
    for value in _endpoints(param):
        wrong_kind = not _is_number(value) or (rule.kind == "int" and not isinstance(value, int))
        if wrong_kind or not rule.check(value):
            raise SearchSpaceError(
                f"Hyperparameter {name!r} ({rule.help}) must be {'an integer' if rule.kind == 'int' else 'a number'} "
                f"{rule.rule}; the space allows {value!r}"
            )


@dataclass(frozen=True)
class SearchSpace:
    """Named ranges of the hyperparameters to search (see :data:`TUNABLE` for the names).

    Attributes:
        params: Hyperparameter name -> :class:`FloatRange`, :class:`IntRange` or :class:`Categorical`.
    """

    params: Mapping[str, Param] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping) or not self.params:
            raise SearchSpaceError("A search space needs at least one hyperparameter")
        for name, param in self.params.items():
            _check_param(name, param)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and dict(self.params) == dict(other.params)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.params.items())))

    def contains(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` names exactly this space's hyperparameters, each within its range."""
        return set(values) == set(self.params) and all(p.contains(values[n]) for n, p in self.params.items())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON form: name -> range object."""
        return {name: param.to_dict() for name, param in self.params.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "search space") -> SearchSpace:
        """Builds a space from its JSON form.

        Args:
            data: Name -> ``{"type": "float"|"int"|"categorical", ...}``.
            source: Where ``data`` came from, for error messages.

        Raises:
            SearchSpaceError: Naming the hyperparameter and what is wrong with it.
        """
        if not isinstance(data, Mapping) or not data:
            raise SearchSpaceError(
                f"{source}: expected a JSON object of hyperparameter name -> range, e.g. "
                '{"lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": true}}'
            )
        params: dict[str, Param] = {}
        for name, spec in data.items():
            try:
                params[name] = _param_from_dict(spec)
            except SearchSpaceError as exc:
                raise SearchSpaceError(f"{source}: hyperparameter {name!r}: {exc}") from None
        try:
            return cls(params)
        except SearchSpaceError as exc:
            raise SearchSpaceError(f"{source}: {exc}") from None


_FIELDS: Mapping[str, tuple[type, frozenset[str], frozenset[str]]] = MappingProxyType(
    {
        "float": (FloatRange, frozenset({"low", "high"}), frozenset({"log"})),
        "int": (IntRange, frozenset({"low", "high"}), frozenset({"step"})),
        "categorical": (Categorical, frozenset({"choices"}), frozenset()),
    }
)


def _param_from_dict(spec: Any) -> Param:
    if not isinstance(spec, Mapping) or spec.get("type") not in _FIELDS:
        raise SearchSpaceError(f"expected an object with a type of {', '.join(repr(t) for t in _FIELDS)}, got {spec!r}")
    kind, required, optional = _FIELDS[spec["type"]]
    keys = set(spec) - {"type"}
    missing = required - keys
    extra = keys - required - optional
    if missing or extra:
        wanted = ", ".join(sorted(required)) + (f" (optional: {', '.join(sorted(optional))})" if optional else "")
        problem = f"missing {', '.join(sorted(missing))}" if missing else f"unknown key(s) {', '.join(sorted(extra))}"
        raise SearchSpaceError(f"{problem}; a {spec['type']!r} range takes {wanted}")
    return kind(**{k: spec[k] for k in keys})  # type: ignore[no-any-return]


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Reads a search space from a JSON file (see the module docstring for the format).

    Raises:
        SearchSpaceError: If the file is missing, is not JSON, or describes an unusable space.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchSpaceError(f"Search space file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # '[[[[...' too deep
        raise SearchSpaceError(f"Search space file {str(file)!r} is not readable JSON: {exc}") from None
    return SearchSpace.from_dict(data, source=str(file))


DEFAULT_SPACE = SearchSpace(
    {
        # dogclf train's default (L-BFGS with a cross-validated penalty), or the epoch loop with the ranges below.
        "head_solver": Categorical(("lbfgs", "loop")),
        # The seeds searched 5e-4..5e-3 and 1e-3..1e-1; one log range covers both and a decade below.
        "lr": FloatRange(1e-4, 1e-1, log=True),
        # The seeds' sizes, minus 512: on cached features a batch costs microseconds, and 512 leaves a
        # 7,000-image training set only ~14 steps an epoch.
        "batch_size": Categorical((16, 32, 64, 128, 256)),
        # The seeds stopped at 5 and 10 because every epoch re-ran the backbone; on cached features an epoch is a
        # pass over a matrix, so the range reaches where a linear head has converged at the smaller learning rates.
        "epochs": IntRange(2, 15),
        # A log range cannot hold 0; 1e-6 is as good as none for Adam's coupled L2 at these learning rates. Up to 1:
        # on ImageNet-pretrained features, photos from outside the backbone's training set reward strong penalties
        # that a validation split drawn from the same pool as the training photos does not show.
        "weight_decay": FloatRange(1e-6, 1.0, log=True),
        "dropout": FloatRange(0.0, 0.5),
    }
)
"""The search space ``dogclf tune`` uses unless ``--space FILE`` gives another."""

SEED_RESNET18_SPACE = SearchSpace(
    {
        "lr": FloatRange(0.0005, 0.005, log=True),
        "batch_size": Categorical((16, 32, 128, 256)),
        "epochs": Categorical((5, 10)),
    }
)
"""The first seed's tuning job (ResNet18): lr 0.0005-0.005 on a log scale, batch size 16/32/128/256, 5 or 10 epochs."""

SEED_INCEPTION_SPACE = SearchSpace(
    {
        "lr": FloatRange(0.001, 0.1, log=True),
        "batch_size": Categorical((64, 128)),
        "epochs": Categorical((2, 5)),
    }
)
"""The second seed's tuning job (Inception-v3): lr 0.001-0.1 on a log scale, batch size 64/128, 2 or 5 epochs."""

SPACE_PRESETS: Mapping[str, SearchSpace] = MappingProxyType(
    {"default": DEFAULT_SPACE, "seed-resnet18": SEED_RESNET18_SPACE, "seed-inception": SEED_INCEPTION_SPACE}
)
"""Search spaces ``--space`` knows by name (anything else is read as a JSON file)."""


def resolve_space(value: str | os.PathLike[str] | None) -> SearchSpace:
    """``--space``: a preset name (:data:`SPACE_PRESETS`), a JSON file, or ``None`` for the default space.

    Raises:
        SearchSpaceError: An unknown preset that is not a file either, or an unusable file.
    """
    if value is None:
        return DEFAULT_SPACE
    text = str(value)
    if text in SPACE_PRESETS:
        return SPACE_PRESETS[text]
    if not Path(text).exists() and not text.endswith(".json"):
        raise SearchSpaceError(
            f"--space {text!r} is neither a preset ({', '.join(SPACE_PRESETS)}) nor an existing JSON file"
        )
    return load_space(text)
