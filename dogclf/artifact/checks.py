"""Checking a model directory on load: every ``config.json`` field, and the weights' shapes and values against it.

A hand-edited or mixed-up model directory must fail with a message naming the key, not load and answer NaN
(``temperature: 0``) or stop with a raw ``RuntimeError`` from ``load_state_dict`` (``class_names`` that do not match
the head). Each check raises :class:`~dogclf.errors.ModelDirError` naming the file, the key, what it holds and what
would work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dogclf.errors import ModelDirError

__all__ = ["TEMPERATURE_RANGE", "check_class_lists", "check_config", "check_state", "check_weight_shapes"]

# The temperatures a model may hold. Fitting keeps to [0.05, 20] (dogclf.training.calibration); a hand-set 1e-40
# would turn every score into 0/0. Outside this range no calibration means anything.
TEMPERATURE_RANGE = (1e-3, 1e3)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_MAX_SIDE = 4096  # pixels; a larger input would exhaust memory at the first image rather than fail clearly


class _Checker:
    """Raises a :class:`ModelDirError` naming ``config.json`` and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ModelDirError:
        return ModelDirError(
            f"{str(self.path)!r}: {key} {problem}. Fix the key, or retrain the model (`dogclf train`) to write a "
            "consistent directory."
        )

    def int_(
        self, data: Mapping[str, Any], key: str, prefix: str = "", *, low: int = 0, high: int | None = None
    ) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            raise self.fail(prefix + key, f"must be an integer {bounds}, got {_short(value)}")
        return value

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        prefix: str = "",
        *,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
        optional: bool = False,
    ) -> float | None:
        value = data.get(key)
        if value is None and optional:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and positive:
            ok = value > 0
        if ok and low is not None:
            ok = value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bounds = " > 0" if positive else ""
            if low is not None and high is not None:
                bounds = f" in [{low:g}, {high:g}]"
            elif low is not None or high is not None:
                bounds = f" >= {low:g}" if low is not None else f"{bounds} and <= {high:g}"
            none = " or null" if optional else ""
            raise self.fail(prefix + key, f"must be a finite number{bounds}{none}, got {value!r}")
        return float(value)

    def mapping(self, data: Mapping[str, Any], key: str, *, optional: bool = False) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None and optional:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a JSON object, got {value!r}")
        return value

    def strings(self, data: Mapping[str, Any], key: str, *, length: int | None = None) -> list[str]:
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, f"must be a list of non-empty strings, got {_short(value)}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"has {len(value)} entries but class_names has {length}")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise self.fail(key, f"lists {', '.join(repr(d) for d in duplicates[:5])} more than once")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_config(config: Any, path: Path, *, format_version: int) -> None:
    """Checks every field of a parsed ``config.json`` that loading, predicting or evaluating uses.

    Args:
        config: The parsed JSON.
        path: The file (named in errors).
        format_version: The newest format this dogclf reads.

    Raises:
        ModelDirError: Naming the first bad key.
    """
    check = _Checker(path)
    if not isinstance(config, Mapping):
        raise ModelDirError(f"{str(path)!r} must hold a JSON object, got {_short(config)}.")
    version = check.int_(config, "format_version", low=1)
    if version > format_version:
        raise ModelDirError(
            f"{str(path.parent)!r} has model format {version}, newer than this dogclf reads ({format_version}); "
            "upgrade dogclf."
        )
    for key in ("backbone",):
        if not isinstance(config.get(key), str) or not config[key].strip():
            raise check.fail(key, f"must be a backbone name, got {config.get(key)!r}")
    for key in ("backbone_distribution", "dogclf_version"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise check.fail(key, f"must be a string, got {config[key]!r}")
    check.int_(config, "num_features", low=1)
    names = check.strings(config, "class_names")
    if len(names) < 2:
        raise check.fail("class_names", f"must name at least 2 classes, got {len(names)}")
    if config.get("class_folders") is not None:
        check.strings(config, "class_folders")
    if config.get("num_classes") is not None:
        check.int_(config, "num_classes")
    if config.get("frozen_backbone") is not None and not isinstance(config["frozen_backbone"], bool):
        raise check.fail("frozen_backbone", f"must be true or false, got {config['frozen_backbone']!r}")
    _check_preprocessing(check, check.mapping(config, "preprocessing"))
    _check_head(check, check.mapping(config, "head"))
    _check_calibration(check, check.mapping(config, "calibration", optional=True))
    _check_novelty(check, check.mapping(config, "novelty", optional=True))
    check.mapping(config, "metrics", optional=True)
    _check_training(check, check.mapping(config, "training", optional=True))


def _check_preprocessing(check: _Checker, pre: Mapping[str, Any]) -> None:
    p = "preprocessing."
    size = check.int_(pre, "input_size", p, low=8, high=_MAX_SIDE)
    resize = check.int_(pre, "resize_size", p, low=8, high=2 * _MAX_SIDE)
    if resize < size:
        raise check.fail(p + "resize_size", f"({resize}) must be >= input_size ({size})")
    for key in ("mean", "std"):
        values = pre.get(key)
        if not isinstance(values, list) or len(values) != 3:
            raise check.fail(p + key, f"must be three numbers (R, G, B), got {_short(values)}")
        good = [isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values]
        if not all(good) or (key == "std" and not all(v > 0 for v in values)):
            kind = "positive finite numbers" if key == "std" else "finite numbers"
            raise check.fail(p + key, f"must be three {kind} (R, G, B), got {_short(values)}")
    interpolation = pre.get("interpolation", "bilinear")
    if interpolation not in _INTERPOLATIONS:
        raise check.fail(p + "interpolation", f"must be one of {', '.join(_INTERPOLATIONS)}, got {interpolation!r}")


def _check_head(check: _Checker, head: Mapping[str, Any]) -> None:
    from dogclf.model import HeadConfig

    fields = {f.name: f for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(head) - set(fields))
    if unknown:
        raise check.fail(f"head.{unknown[0]}", f"is not a head setting (known: {', '.join(fields)})")
    for name, value in head.items():
        default = fields[name].default
        kinds: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
        if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise check.fail(f"head.{name}", f"must be a {type(default).__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise check.fail(f"head.{name}", f"must be finite, got {value!r}")
    try:
        HeadConfig(**head)
    except (TypeError, ValueError) as exc:
        raise check.fail("head", f"is not a valid head ({exc})") from exc


def _check_calibration(check: _Checker, calibration: Mapping[str, Any]) -> None:
    if not calibration:
        return
    p = "calibration."
    if "temperature" in calibration:
        low, high = TEMPERATURE_RANGE
        check.number(calibration, "temperature", p, low=low, high=high)
    check.number(calibration, "unknown_threshold", p, low=0.0, optional=True)  # above 1: every image is unknown
    if calibration.get("keep") is not None:
        check.number(calibration, "keep", p, positive=True, high=1.0)
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        check.number(calibration, key, p, low=0.0, optional=True)
    if calibration.get("n") is not None:
        check.int_(calibration, "n", p)


def _check_novelty(check: _Checker, novelty: Mapping[str, Any]) -> None:
    if not novelty:
        return
    p = "novelty."
    if not isinstance(novelty.get("method"), str):
        raise check.fail(p + "method", f"must be a method name such as 'knn', got {_short(novelty.get('method'))}")
    if novelty.get("file") is not None:
        name = novelty["file"]
        if not isinstance(name, str) or not name.strip() or Path(name).name != name:
            raise check.fail(p + "file", f"must be a file name inside the model directory, got {_short(name)}")
    if novelty.get("k") is not None:
        check.int_(novelty, "k", p, low=1)
    check.number(novelty, "threshold", p, optional=True)
    if novelty.get("keep") is not None:
        check.number(novelty, "keep", p, positive=True, high=1.0)
    check.number(novelty, "temperature", p, positive=True, optional=True)
    check.number(novelty, "shrinkage", p, low=0.0, high=1.0, optional=True)
    scales = novelty.get("scales")
    if scales is not None:
        pairs = scales.values() if isinstance(scales, Mapping) else [None]
        if not all(_is_scale(pair) for pair in pairs):
            raise check.fail(p + "scales", f"must map each score to [centre, spread > 0], got {_short(scales)}")


def _is_scale(pair: Any) -> bool:
    numbers = isinstance(pair, list) and len(pair) == 2
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    return numbers and all(math.isfinite(v) for v in pair) and pair[1] > 0


def _check_training(check: _Checker, training: Mapping[str, Any]) -> None:
    p = "training."
    fraction = check.number(training, "valid_fraction", p, low=0.0, high=1.0, optional=True)
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise check.fail(p + "valid_fraction", f"must be between 0 and 1 (exclusive) or null, got {fraction!r}")
    if training.get("seed") is not None:
        check.int_(training, "seed", p, low=-(2**63))
    for key in ("n_train", "n_valid", "n_test"):
        if training.get(key) is not None:
            check.int_(training, key, p)
    for key in ("data", "train_files", "valid_files"):
        if training.get(key) is not None and not isinstance(training[key], str):
            raise check.fail(p + key, f"must be a string or null, got {training[key]!r}")


def check_class_lists(config: Mapping[str, Any], path: Path) -> None:
    """Checks that ``class_folders`` and ``num_classes`` agree with ``class_names`` (after the weights did).

    Raises:
        ModelDirError: Naming the key that disagrees.
    """
    check = _Checker(path)
    names = config["class_names"]
    if config.get("class_folders") is not None:
        check.strings(config, "class_folders", length=len(names))
    if config.get("num_classes") is not None and config["num_classes"] != len(names):
        raise check.fail("num_classes", f"is {config['num_classes']} but class_names has {len(names)} entries")


def check_weight_shapes(config: Mapping[str, Any], weights: Path, *, config_path: Path) -> None:
    """Checks the head in ``model.safetensors`` (read from its header only) against ``config.json``.

    Raises:
        ModelDirError: The weights cannot be read, or the head's keys or shapes differ from what ``head``,
            ``num_features`` and ``class_names`` describe (naming the key that disagrees).
    """
    import torch
    from safetensors import safe_open

    from dogclf.model import HeadConfig, build_head

    try:
        with safe_open(str(weights), framework="pt") as handle:
            names = [k for k in handle.keys() if k.startswith("head.")]  # noqa: SIM118 (not iterable)
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in names}
    except Exception as exc:
        raise ModelDirError(f"Cannot read weights {str(weights)!r}: {type(exc).__name__}: {exc}") from exc
    classes, features = config["class_names"], config["num_features"]
    with torch.device("meta"):
        expected = build_head(features, len(classes), HeadConfig(**config["head"])).state_dict()
    wanted = {f"head.{k}": tuple(v.shape) for k, v in expected.items()}
    if set(shapes) != set(wanted):
        raise ModelDirError(
            f"{str(config_path)!r}: head {dict(config['head'])} describes layers {', '.join(sorted(wanted))}, but "
            f"{str(weights)!r} holds {', '.join(sorted(shapes)) or 'no head'}: the two files are from different models."
        )
    last = max(wanted, key=lambda k: int(k.split(".")[1]) if k.endswith(".weight") else -1)
    if shapes[last][0] != len(classes):
        raise ModelDirError(
            f"{str(config_path)!r}: class_names has {len(classes)} entries, but the head in {str(weights)!r} has "
            f"{shapes[last][0]} outputs ({last} {shapes[last]}): the two files are from different models, or "
            "class_names was edited; give one name per output."
        )
    first = min((k for k in wanted if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    if shapes[first][1] != features:
        raise ModelDirError(
            f"{str(config_path)!r}: num_features is {features}, but the head in {str(weights)!r} takes "
            f"{shapes[first][1]} ({first} {shapes[first]}); num_features must be the backbone's feature width."
        )
    wrong = [f"{k} {shapes[k]} != {wanted[k]}" for k in sorted(wanted) if shapes[k] != wanted[k]]
    if wrong:
        raise ModelDirError(
            f"{str(config_path)!r}: head {dict(config['head'])} does not fit {str(weights)!r}: {', '.join(wrong)}."
        )


def check_state(net: Any, state: Mapping[str, Any], root: Path, *, backbone: str) -> None:
    """Checks loaded weights against the rebuilt network: same keys, same shapes, only finite values.

    Raises:
        ModelDirError: Naming the missing, unexpected, misshapen or non-finite tensors.
    """
    import torch

    from dogclf.backbones.weights import state_dict_mismatch

    mismatch = state_dict_mismatch(net.state_dict(), state)
    if mismatch:
        raise ModelDirError(
            f"Weights in {str(root)!r} do not fit backbone {backbone!r} with this head: {mismatch} tensors. The "
            "backbone installed here may differ from the one the model was trained with."
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelDirError(
            f"Weights in {str(root)!r} hold NaN or infinite values ({', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); the model cannot give meaningful scores. "
            "Retrain it (the training run may have diverged: try a lower --lr)."
        )
