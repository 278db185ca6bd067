"""The trained-model directory: ``model.safetensors`` plus ``config.json``, which records their digests.

Loading needs no network and no pickle, and never downloads pretrained
weights: the backbone is built empty and every weight comes from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.artifact.config import FORMAT_VERSION, ModelConfig, config_section
from dogclf.artifact.manifest import MANIFEST_KEY, manifest
from dogclf.backbones.spec import BackboneSpec
from dogclf.errors import ModelDirError, UnknownBackboneError

if TYPE_CHECKING:
    from dogclf.data.folder import ClassInfo

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "load_config",
    "model_classes",
    "read_config",
    "save_model",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
NOVELTY_NAME = "novelty.safetensors"  # the novelty score's tensors (dogclf.inference.novelty), when it has one


def save_model(
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    spec: BackboneSpec,
    classes: Sequence[Any],
    head: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
    novelty: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a trained model directory.

    Args:
        model: The trained ``DogClassifierNet``.
        out_dir: The directory (created).
        spec: The backbone spec it was built from.
        classes: ``ClassInfo`` objects in index order.
        head: The head's shape (``HeadConfig.to_dict()``).
        metrics: Training metrics to record (history, final values).
        training: The training configuration to record.
        calibration: Temperature and unknown threshold (``Calibration.to_dict()``); omitted: temperature 1.0,
            never unknown.
        novelty: The novelty score's settings (``NoveltyScorer.to_config()``; its file is written separately), or
            ``None`` for none.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    from dogclf._version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = {
        "format_version": FORMAT_VERSION,
        "dogclf_version": __version__,
        "backbone": spec.name,
        "backbone_distribution": spec.distribution,
        "num_features": spec.num_features,
        "num_classes": len(classes),
        "class_names": [c.name for c in classes],
        "class_folders": [c.folder for c in classes],
        "preprocessing": spec.preprocessing.to_dict(),
        "head": dict(head),
        "frozen_backbone": bool(getattr(model, "frozen", True)),
        "metrics": dict(metrics or {}),
        "training": dict(training or {}),
    }
    if calibration is not None:
        config["calibration"] = dict(calibration)
    if novelty is not None:
        config["novelty"] = dict(novelty)
    tmp_weights = out / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp_weights), metadata={"format": "pt", "dogclf_version": __version__})
    # safetensors creates the file owner-only; a model is meant to be read by servers running as other users.
    os.chmod(tmp_weights, 0o644)
    _sync(tmp_weights)
    files = [(WEIGHTS_NAME, tmp_weights)]
    novelty_file = None if novelty is None else str(novelty.get("file", NOVELTY_NAME))  # written before this call
    if novelty_file is not None and (out / novelty_file).is_file():
        files.append((novelty_file, out / novelty_file))
    config[MANIFEST_KEY] = manifest(files)  # checked on load: a crash between the renames below cannot go unseen
    os.replace(tmp_weights, out / WEIGHTS_NAME)
    tmp_config = out / f".{CONFIG_NAME}.tmp"
    tmp_config.write_text(json.dumps(ModelConfig.parse(config).to_dict(), indent=2) + "\n", encoding="utf-8")
    _sync(tmp_config)
    os.replace(tmp_config, out / CONFIG_NAME)
    return out


def _sync(path: Path) -> None:
    """Flushes a written file to disk, so that the rename that publishes it cannot outlive its bytes."""
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and checks ``config.json`` of a model directory, as a dict (:func:`load_config`'s ``to_dict()``).

    Raises:
        ModelDirError: If files are missing or the config is malformed, naming the bad key.
    """
    return load_config(model_dir).to_dict()


def load_config(model_dir: str | os.PathLike[str]) -> ModelConfig:
    """Reads and checks ``config.json`` of a model directory.

    Every field that loading, predicting and evaluating use is checked (types, ranges), and the head's shapes in
    ``model.safetensors`` (its header only) against ``head``, ``num_features`` and ``class_names``
    (:meth:`~dogclf.artifact.config.ModelConfig.from_dict`, :mod:`dogclf.artifact.checks`).

    Raises:
        ModelDirError: If files are missing or the config is malformed, naming the bad key.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"Model directory {str(root)!r} does not exist. Train one with `dogclf train --out DIR`.")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (root / name).is_file()]
    if missing:
        hint = ""
        if (root / "checkpoint.pt").is_file():
            hint = " It holds a checkpoint of an unfinished run: finish it with `dogclf train ... --resume`."
        raise ModelDirError(f"{str(root)!r} is not a dogclf model directory: missing {', '.join(missing)}.{hint}")
    path = root / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    except RecursionError:  # '[[[[...' nested deeper than Python's parser recurses
        raise ModelDirError(
            f"{str(path)!r} is not a dogclf config: its JSON is nested too deeply to read. Retrain the model "
            "(`dogclf train`) to write a valid config.json."
        ) from None
    return ModelConfig.from_dict(config, source=path, weights=root / WEIGHTS_NAME)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def model_classes(config: ModelConfig | Mapping[str, Any]) -> list[ClassInfo]:
    """The model's classes as ``ClassInfo`` (folder id and display name) in output order.

    Models saved without ``class_folders`` use the display names as folder ids.

    Args:
        config: The model's config, or a dict with its ``class_names`` (and ``class_folders``).
    """
    from dogclf.data.folder import ClassInfo

    names = config_section(config, "class_names")
    folders = config_section(config, "class_folders") or names
    return [ClassInfo(str(f), str(n)) for f, n in zip(folders, names, strict=True)]


def load_state(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads ``model.safetensors`` of a model directory."""
    from safetensors.torch import load_file

    path = Path(model_dir) / WEIGHTS_NAME
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelDirError(f"Cannot read weights {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def resolve_spec(config: ModelConfig, model_dir: str | os.PathLike[str]) -> BackboneSpec:
    """Finds the backbone a saved model needs, checking it still fits."""
    from dogclf.backbones.registry import get_backbone

    name = config.backbone
    try:
        spec = get_backbone(name)
    except UnknownBackboneError as exc:
        origin = config.backbone_distribution or "a plugin"
        raise ModelDirError(
            f"The model in {str(model_dir)!r} uses backbone {name!r} (from {origin}), which is not installed "
            f"here. Install the package that provides it. ({exc})"
        ) from exc
    if spec.num_features != config.num_features:
        raise ModelDirError(
            f"Backbone {name!r} now has {spec.num_features} features, but the model in {str(model_dir)!r} was "
            f"trained with {config.num_features}; install the backbone version it was trained with."
        )
    saved = config.preprocessing
    if saved != spec.preprocessing:
        import dataclasses

        spec = dataclasses.replace(spec, preprocessing=saved)
    return spec
