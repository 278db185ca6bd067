"""Rules that run inside dogclf's training loop, named and parameterised as SageMaker Debugger's built-in rules.

================================  ======================================================  ==========
rule                              looks at                                                where
================================  ======================================================  ==========
``LossNotDecreasing``             training loss per step (or validation loss per epoch)   ``loss``
``Overfit``                       epoch mean train vs validation loss                     ``loss``
``Overtraining``                  best train / validation loss per epoch                  ``loss``
``VanishingGradient``             mean absolute gradient per tensor                       ``tensors``
``ExplodingTensor``               NaN/inf in the loss, gradients, weights                 ``tensors``
``WeightUpdateRatio``             ``||update|| / ||weight||`` per weight                  ``tensors``
``PoorWeightInitialization``      head layer-input variances, gradient spread, 1st loss   ``tensors``
``ClassImbalance``                training labels and predictions per class               ``data``
``StalledTrainingRule``           time since the last finished batch (a thread)           ``progress``
================================  ======================================================  ==========

``--rules default`` runs the cheap ones (all but ``WeightUpdateRatio`` and ``PoorWeightInitialization``), ``all``
runs every rule, ``none`` none; a comma list mixes names and groups (``default,WeightUpdateRatio``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from dogclf.diagnostics.rules.base import AWS_RULES_URL, RULES_FILE, Finding, Rule, RuleSet
from dogclf.diagnostics.rules.data import ClassImbalance
from dogclf.diagnostics.rules.loss import LossNotDecreasing, Overfit, Overtraining
from dogclf.diagnostics.rules.progress import StalledTrainingRule
from dogclf.diagnostics.rules.tensors import (
    ExplodingTensor,
    PoorWeightInitialization,
    VanishingGradient,
    WeightUpdateRatio,
)

__all__ = [
    "AWS_RULES_URL",
    "BUILTIN_RULES",
    "RULES_FILE",
    "ClassImbalance",
    "ExplodingTensor",
    "Finding",
    "LossNotDecreasing",
    "Overfit",
    "Overtraining",
    "PoorWeightInitialization",
    "Rule",
    "RuleSet",
    "StalledTrainingRule",
    "VanishingGradient",
    "WeightUpdateRatio",
    "make_rules",
    "parse_rule_param",
    "select_rules",
]

BUILTIN_RULES: dict[str, type[Rule]] = {
    cls.name: cls
    for cls in (
        LossNotDecreasing,
        Overfit,
        Overtraining,
        VanishingGradient,
        ExplodingTensor,
        WeightUpdateRatio,
        PoorWeightInitialization,
        ClassImbalance,
        StalledTrainingRule,
    )
}
GROUPS = ("none", "default", "all")


def select_rules(selection: str | Sequence[str]) -> list[str]:
    """Rule names for a selection: ``"none"``, ``"default"``, ``"all"``, rule names, or a comma list of those.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    names: list[str] = []
    for item in (i.strip() for i in items):
        if item in ("", "none"):
            continue
        if item == "default":
            chosen = [n for n, cls in BUILTIN_RULES.items() if cls.cheap]
        elif item == "all":
            chosen = list(BUILTIN_RULES)
        elif item in BUILTIN_RULES:
            chosen = [item]
        else:
            raise ValueError(
                f"Unknown rule {item!r}. Use none, default, all, or rule names: {', '.join(BUILTIN_RULES)}."
            )
        names += [n for n in chosen if n not in names]
    return names


def make_rules(
    selection: str | Sequence[str | Rule] = "default",
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Rule]:
    """Builds the rules of a selection, with per-rule parameters.

    Args:
        selection: As for :func:`select_rules`; rule instances may be mixed in and are used as they are.
        params: Rule name -> parameter overrides, e.g. ``{"Overfit": {"ratio_threshold": 0.2}}``.

    Raises:
        ValueError: For an unknown rule or parameter, or parameters for a rule the selection does not run.
    """
    params = dict(params or {})
    given = [r for r in ([] if isinstance(selection, str) else selection) if isinstance(r, Rule)]
    names = select_rules(selection if isinstance(selection, str) else [s for s in selection if isinstance(s, str)])
    for name, overrides in params.items():
        if name not in BUILTIN_RULES:
            raise ValueError(f"Parameters for unknown rule {name!r}; the rules are: {', '.join(BUILTIN_RULES)}.")
        if name not in names:
            raise ValueError(
                f"Parameters were given for {name}, which the selected rules do not include; "
                f"add it to the selection (e.g. --rules default,{name})."
            )
        known = BUILTIN_RULES[name].parameter_names()
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"Rule {name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(known)}.")
    built = [BUILTIN_RULES[n](**params.get(n, {})) for n in names if n not in {r.name for r in given}]
    return [*given, *built]


def parse_rule_param(text: str) -> tuple[str, str, Any]:
    """Parses ``Rule.param=value`` (a ``--rule-param``) into ``(rule, param, value)``.

    The value is typed as the parameter's default is.

    Raises:
        ValueError: Naming what is wrong and the accepted form.
    """
    key, sep, raw = text.partition("=")
    rule, dot, param = key.strip().partition(".")
    if not (sep and dot and rule and param):
        raise ValueError(f"--rule-param {text!r}: use RULE.PARAMETER=VALUE, e.g. Overfit.ratio_threshold=0.2")
    cls = BUILTIN_RULES.get(rule)
    if cls is None:
        raise ValueError(f"--rule-param {text!r}: unknown rule {rule!r}; the rules are: {', '.join(BUILTIN_RULES)}.")
    if param not in cls.parameter_names():
        raise ValueError(
            f"--rule-param {text!r}: {rule} has no parameter {param!r}; its parameters: "
            f"{', '.join(cls.parameter_names())}."
        )
    return rule, param, _typed(cls, param, raw.strip(), text)


def _typed(cls: type[Rule], param: str, raw: str, text: str) -> Any:
    hints = typing.get_type_hints(cls)
    field = next(f for f in dataclasses.fields(cls) if f.name == param)  # type: ignore[arg-type]
    kinds = [t for t in typing.get_args(hints[param]) if t is not type(None)] or [hints[param]]
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(hints[param]):
        return None
    for kind in kinds:
        try:
            if kind is bool:
                if raw.lower() in ("true", "1", "yes"):
                    return True
                if raw.lower() in ("false", "0", "no"):
                    return False
                continue
            if kind in (int, float, str):
                return kind(raw)
            if typing.get_origin(kind) is list:
                return [item.strip() for item in raw.split(",")]
        except ValueError:
            continue
    raise ValueError(f"--rule-param {text!r}: {raw!r} is not a valid value for {param} (default {field.default!r}).")
