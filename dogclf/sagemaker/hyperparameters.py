"""Hyperparameters between SageMaker and ``dogclf train``'s options, in both directions.

SageMaker stores hyperparameters as strings and the training toolkit hands them to the entry script as
``--name value`` flags. Names arrive as the seeds wrote them (``learning_rate``, ``batch_size``, ``batch-size``) or as
dogclf writes them (``lr``, ``batch-size``), and values as SageMaker delivers them: ``0.001``, ``true``, or
JSON-quoted strings such as ``"16"`` (a tuning job's categorical values; the first seed's best job shows
``'batch_size': '"16"'``). :func:`normalize_argv` turns all of that into arguments ``dogclf train``'s own parser
reads; :func:`to_hyperparameters` writes dogclf's options the other way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from dogclf.errors import DogclfError

__all__ = ["ALIASES", "HyperparameterError", "normalize_argv", "to_hyperparameters", "unquote"]

ALIASES: Mapping[str, str] = {
    "learning-rate": "lr",
    "learningrate": "lr",
    "batchsize": "batch-size",
    "num-epochs": "epochs",
    "n-epochs": "epochs",
    "wd": "weight-decay",
}
"""Other names for dogclf's options (after ``_`` became ``-`` and case was folded): the seeds' and common ones."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class HyperparameterError(DogclfError, ValueError):
    """A hyperparameter the entry script cannot turn into a ``dogclf train`` option."""


def unquote(value: str) -> str:
    """Strips JSON string quoting, as many levels as there are (``"16"`` with its quotes -> ``16``).

    Anything that is not a JSON string literal is returned unchanged.
    """
    while len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if not isinstance(decoded, str):
            return value
        value = decoded
    return value


def _canonical(name: str) -> str:
    flag = name.lstrip("-").strip().lower().replace("_", "-")
    return ALIASES.get(flag, flag)


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def _truth(name: str, value: str) -> bool:
    word = unquote(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise HyperparameterError(f"Hyperparameter {name} takes true or false, got {value!r}")


def _split(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``--name value`` / ``--name=value`` / a bare ``--flag`` -> ``(name, value or None)`` pairs, in order."""
    pairs: list[tuple[str, str | None]] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if not token.startswith("-") or token in ("-", "--"):
            raise HyperparameterError(f"Expected a --name before {token!r} in the entry script's arguments {items}")
        if "=" in token:
            name, value = token.split("=", 1)
            pairs.append((name, value))
            i += 1
        elif i + 1 < len(items) and not (items[i + 1].startswith("--") and len(items[i + 1]) > 2):
            pairs.append((token, items[i + 1]))
            i += 2
        else:
            pairs.append((token, None))
            i += 1
    return pairs


def normalize_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrites SageMaker-style ``--name value`` arguments into ones ``parser`` accepts.

    - names: ``_`` becomes ``-``, case is folded, and :data:`ALIASES` apply (``--learning_rate`` -> ``--lr``);
    - values: JSON string quoting is removed (``'"16"'`` -> ``16``);
    - switches: ``--augment true`` -> ``--augment``, ``--augment false`` -> nothing; ``--freeze false`` ->
      ``--no-freeze`` for options that have a ``--no-`` form.

    Args:
        argv: The arguments as the toolkit passed them.
        parser: The parser they are for (``dogclf train``'s options plus the entry script's own).

    Returns:
        The arguments to parse.

    Raises:
        HyperparameterError: A switch given a value that is not true/false, or a value with no name.
    """
    actions = _option_actions(parser)
    out: list[str] = []
    for raw_name, raw_value in _split(argv):
        flag = "--" + _canonical(raw_name)
        action = actions.get(flag)
        if isinstance(action, argparse.BooleanOptionalAction):
            on = True if raw_value is None else _truth(flag, raw_value)
            out.append(flag if on else "--no-" + flag[2:])
        elif action is not None and action.nargs == 0:  # store_true / store_false / version ...
            if raw_value is None or _truth(flag, raw_value):
                out.append(flag)
        elif raw_value is None:
            out.append(flag)  # let the parser say what it expected
        else:
            out += [flag, unquote(raw_value)]
    return out


def to_hyperparameters(options: Mapping[str, Any]) -> dict[str, str]:
    """Turns dogclf option values into SageMaker hyperparameters (flag names without ``--``, string values).

    ``None`` values are left out; booleans become ``"true"``/``"false"``; names use dogclf's spelling
    (``batch_size`` -> ``batch-size``).
    """
    result: dict[str, str] = {}
    for name, value in options.items():
        if value is None:
            continue
        key = _canonical(name)
        if isinstance(value, bool):
            result[key] = "true" if value else "false"
        elif isinstance(value, float):
            result[key] = repr(value)
        else:
            result[key] = str(value)
    return result
