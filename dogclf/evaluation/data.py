"""Which labelled images ``dogclf evaluate`` scores: a whole class-folder tree, one split folder, or a held-out part.

- A plain tree of class folders (a held-out set someone hands you) is scored as a whole (``split="all"``, the default
  for such a folder), each folder matched to the model's classes by folder id or class name.
- A data folder with ``train/``, ``valid/`` (or ``val/``) and ``test/`` is scored one split folder at a time
  (``split="test"`` by default), matched the same way; only the folder asked for needs to exist.
- ``split="valid"`` (or ``"train"``) on the folder a model was trained on with a valid fraction rebuilds the part it
  held out (or kept), and only when the folder's files are the ones the model was trained on: on any other folder
  the same fraction and seed would pick different images, so that is an error rather than a silent 20%.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dogclf.artifact.config import ModelConfig, TrainingRecord
from dogclf.data.folder import ClassInfo, Sample, load_splits
from dogclf.data.labelled import load_labelled
from dogclf.errors import DatasetError

__all__ = ["EVAL_SPLITS", "EvalSet", "select_eval_set"]

EVAL_SPLITS = ("all", "train", "valid", "test")
_SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}


@dataclass
class EvalSet:
    """The images to evaluate and where they came from.

    Attributes:
        samples: Labelled images (labels index the model's classes).
        split: ``"all"``, ``"train"``, ``"valid"`` or ``"test"``.
        folder: The folder the images were read from.
        description: What was evaluated, in words (e.g. ``"every class folder of heldout"``).
        missing: Model classes with no folder there (not evaluated).
        unknown: Folders that match no model class (left out with ``unknown="skip"``).
        skipped: ``(path, reason)`` of unreadable images left out.
    """

    samples: list[Sample]
    split: str
    folder: Path
    description: str
    missing: list[ClassInfo] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _split_folder(root: Path, split: str) -> Path | None:
    found = [root / name for name in _SPLIT_FOLDERS.get(split, ()) if (root / name).is_dir()]
    if len(found) > 1:
        raise DatasetError(f"{str(root)!r} has both valid/ and val/; keep one validation folder.")
    return found[0] if found else None


def _has_split_folders(root: Path) -> bool:
    return any((root / name).is_dir() for names in _SPLIT_FOLDERS.values() for name in names)


def select_eval_set(
    data: str | os.PathLike[str],
    config: ModelConfig,
    *,
    split: str | None = None,
    strict: bool = False,
    unknown: str = "error",
) -> EvalSet:
    """Finds the images to evaluate a model on (see the module docstring for the rules).

    Args:
        data: A class-folder tree, or a data folder with split folders.
        config: The model's config (its classes, and how it split its training data).
        split: ``"all"``, ``"train"``, ``"valid"``, ``"test"``; ``None``: ``"test"`` for a folder with split folders,
            else ``"all"``.
        strict: Fail on unreadable images instead of leaving them out.
        unknown: ``"error"`` or ``"skip"`` for folders that match no model class.

    Returns:
        The images and their description.

    Raises:
        DatasetError: The folder or split is missing, folders do not match the model's classes, or a held-out split
            cannot be rebuilt because the folder is not the one the model was trained on.
    """
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"Data folder {str(root)!r} does not exist.")
    layered = _has_split_folders(root)
    split = split or ("test" if layered else "all")
    if split not in EVAL_SPLITS:
        raise DatasetError(f"Unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}.")
    classes = config.classes
    if split == "all":
        if layered:
            raise DatasetError(
                f"{str(root)!r} has split folders (train/, valid/ or test/); evaluate one of them with --split "
                "test|valid|train, or point --data at a folder of class folders to evaluate it all."
            )
        return _whole(root, classes, split, f"every class folder of {root}", strict=strict, unknown=unknown)
    folder = _split_folder(root, split)
    training = config.training or TrainingRecord()
    if split in ("train", "valid") and training.valid_fraction and _split_folder(root, "valid") is None:
        return _held_out(root, config, split, strict=strict)
    if folder is not None:
        return _whole(folder, classes, split, f"{folder.name}/ of {root}", strict=strict, unknown=unknown)
    if layered:
        present = ", ".join(f"{n}/" for names in _SPLIT_FOLDERS.values() for n in names if (root / n).is_dir())
        raise DatasetError(f"{str(root)!r} has no {split}/ folder (it has {present}); choose another --split.")
    raise DatasetError(
        f"{str(root)!r} is a folder of class folders without split folders, and the model held out no part of it: "
        f"it has no {split!r} split. Evaluate all of it with --split all (the default for such a folder)."
    )


def _whole(
    folder: Path, classes: list[ClassInfo], split: str, description: str, *, strict: bool, unknown: str
) -> EvalSet:
    labelled = load_labelled(folder, classes, strict=strict, unknown=unknown)
    return EvalSet(
        samples=labelled.samples,
        split=split,
        folder=folder,
        description=description,
        missing=labelled.missing,
        unknown=labelled.unknown,
        skipped=labelled.skipped,
    )


def _held_out(root: Path, config: ModelConfig, split: str, *, strict: bool) -> EvalSet:
    """The part of the training folder the model held out for validation (or kept for training)."""
    training = config.training or TrainingRecord()
    fraction, seed = float(training.valid_fraction or 0.0), int(training.seed or 0)
    classes = config.classes
    splits = load_splits(
        root,
        valid_fraction=fraction,
        names={c.folder: c.name for c in classes},
        seed=seed,
        strict=strict,
        require_valid=False,
    )
    same_classes = [c.folder for c in splits.classes] == [c.folder for c in classes]
    recorded = training.train_files if split == "train" else training.valid_files
    if recorded is not None:
        same_files = same_classes and splits.files_digest(split) == recorded
    else:  # a model saved before file digests were recorded: the same folder and image counts
        trained_on = training.data
        same_files = (
            same_classes
            and trained_on is not None
            and Path(trained_on).resolve() == root.resolve()
            and len(splits.train) == training.n_train
            and len(splits.valid) == training.n_valid
        )
    if not same_files:
        raise DatasetError(
            f"--split {split}: this model held out {fraction:g} of {training.data!r} (seed {seed}) for "
            f"validation, and {str(root)!r} does not hold the same images, so the same fraction would pick other "
            "ones. Evaluate all of it with --split all, or give it a valid/ or test/ folder."
        )
    part = "held out for validation" if split == "valid" else "kept for training"
    return EvalSet(
        samples=splits.split(split),
        split=split,
        folder=root,
        description=f"the {fraction:g} of {root} {part} when the model was trained (seed {seed})"
        if split == "valid"
        else f"the part of {root} {part} when the model was trained (valid fraction {fraction:g}, seed {seed})",
        skipped=splits.skipped,
    )
