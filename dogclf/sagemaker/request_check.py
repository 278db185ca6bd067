r"""Checking a SageMaker request against botocore's service model before anything is uploaded or sent.

botocore's own parameter validation (what boto3 runs before sending) checks types, required members and minimums,
but not a string's ``max`` length, its ``pattern`` or its ``enum``, nor a number's or a list's ``max``: AWS checks
those and answers ``ValidationException`` after the data has been uploaded. :func:`validate_request` checks both,
generically: every member of the request, at any depth, against the constraints its shape carries in the model
(``TrainingJobName`` at most 63 characters of ``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``, a tuning job's name at most 32,
a tag value at most 256, at most 100 hyperparameters ...). Patterns are Java regular expressions; they are matched
whole with the ``regex`` package (which reads ``\p{L}``), or ``re`` where it is missing; one neither compiles is
skipped.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from dogclf.errors import DogclfError

__all__ = ["RequestError", "constraint_problems", "validate_request"]

_SHOWN_CHOICES = 8


class RequestError(DogclfError, ValueError):
    """A request that SageMaker's API model refuses."""


@functools.lru_cache(maxsize=1)
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    try:
        import regex as engine
    except ImportError:  # the sagemaker extra installs it; without it, \p{...} patterns are skipped
        import re as engine
    try:
        return engine.compile(pattern)
    except Exception:  # a Java pattern this engine cannot read: not checked
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string_problems(shape: Any, value: str, path: str) -> Iterator[str]:
    meta = shape.metadata
    if "max" in meta and len(value) > meta["max"]:
        yield f"{path}: {_short(value)} has {len(value)} characters; at most {meta['max']} are allowed"
        return  # its pattern (often length-bounded too) would only say the same again
    enum = getattr(shape, "enum", None) or []
    if enum and value not in enum:
        close = difflib.get_close_matches(value, enum, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        more = f", ... ({len(enum)} in all)" if len(enum) > _SHOWN_CHOICES else ""
        choices = ", ".join(enum[:_SHOWN_CHOICES]) + more
        yield f"{path}: {_short(value)} is not one of {choices}{hint}"
    pattern = meta.get("pattern")
    compiled = _compiled(pattern) if pattern else None
    if compiled is not None and compiled.fullmatch(value) is None:
        yield f"{path}: {_short(value)} does not match the pattern {pattern}"


def constraint_problems(shape: Any, value: Any, path: str) -> Iterator[str]:
    """What in ``value`` breaks the ``max``, ``pattern`` and ``enum`` constraints of ``shape`` (recursively)."""
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure" and isinstance(value, Mapping):
        for name, member in shape.members.items():
            if name in value:
                yield from constraint_problems(member, value[name], f"{path}.{name}" if path else name)
    elif kind == "list" and isinstance(value, list | tuple):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: {len(value)} entries; at most {meta['max']} are allowed"
        for i, item in enumerate(value):
            yield from constraint_problems(shape.member, item, f"{path}[{i}]")
    elif kind == "map" and isinstance(value, Mapping):
        if "max" in meta and len(value) > meta["max"]:
            yield f"{path}: {len(value)} entries; at most {meta['max']} are allowed"
        for key, item in value.items():
            yield from constraint_problems(shape.key, key, f"{path} key {_short(key)}")
            yield from constraint_problems(shape.value, item, f"{path}[{key!r}]")
    elif kind == "string" and isinstance(value, str):
        yield from _string_problems(shape, value, path)
    elif (
        kind in ("integer", "long", "float", "double")
        and isinstance(value, int | float)
        and value > meta.get("max", value)
    ):
        yield f"{path}: {value} is above the maximum {meta['max']}"


def validate_request(operation: str, request: Mapping[str, Any]) -> None:
    """Checks a request against SageMaker's API model (offline), as boto3 and then AWS would.

    Args:
        operation: The API operation, e.g. ``CreateTrainingJob``.
        request: Its parameters.

    Raises:
        RequestError: Every member that does not fit, by its path, in one message.
    """
    import botocore.validate

    shape = _service_model().operation_model(operation).input_shape
    report = botocore.validate.ParamValidator().validate(dict(request), shape)
    problems = [report.generate_report()] if report.has_errors() else []
    problems += [f"  {problem}" for problem in constraint_problems(shape, request, "")]
    if problems:
        raise RequestError(f"The {operation} request does not fit SageMaker's API:\n" + "\n".join(problems))
