"""A class-per-folder tree labelled against a class list that is given (a trained model's), not read from it.

A held-out set someone hands you rarely has the training folder's exact layout: its folders may be named by the
breed (``Shih-Tzu``) where the model's were WordNet ids (``n02086240``), some breeds may be absent, and it may hold
folders the model never saw. :func:`load_labelled` matches each folder to one of the given classes by folder id,
then by display name, then by a loose form of either, and says which folders and classes found no partner.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dogclf._sorting import natural_key
from dogclf.data.folder import ClassInfo, Sample, find_images, readable_samples
from dogclf.data.images import IMAGE_EXTENSIONS
from dogclf.errors import DatasetError

__all__ = ["LabelledFolder", "load_labelled", "match_folders"]

_NUMBER_PREFIX = re.compile(r"^\d+\.")
_SEPARATORS = re.compile(r"[\s_\-]+")
_SPLIT_NAMES = ("train", "valid", "val", "test")


@dataclass
class LabelledFolder:
    """The images of one class-per-folder tree, labelled with indices into a given class list.

    Attributes:
        root: The folder.
        classes: The given classes, in index order (labels index this list).
        samples: The images of every matched folder, by class index then path.
        folders: Each matched folder name and the index of its class.
        missing: The classes no folder matched (nothing of theirs is evaluated).
        unknown: Folders that matched no class (left out with ``unknown="skip"``).
        skipped: ``(path, reason)`` of every unreadable image left out.
    """

    root: Path
    classes: list[ClassInfo]
    samples: list[Sample]
    folders: dict[str, int]
    missing: list[ClassInfo] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _loose(text: str) -> str:
    """``"001.Shih_Tzu"``, ``"shih-tzu"`` and ``"Shih Tzu"`` all become ``"shih tzu"``."""
    return _SEPARATORS.sub(" ", _NUMBER_PREFIX.sub("", text)).strip().lower()


def _as_classes(classes: Sequence[ClassInfo | str]) -> list[ClassInfo]:
    result = [c if isinstance(c, ClassInfo) else ClassInfo(str(c), str(c)) for c in classes]
    if len(result) < 1:
        raise DatasetError("The class list to label a folder against is empty.")
    return result


def match_folders(folders: Sequence[str], classes: Sequence[ClassInfo]) -> tuple[dict[str, int], list[str]]:
    """Matches folder names to classes: by class folder id, else display name, else a loose form of either.

    The loose form ignores case, a leading ``NNN.`` number, and spaces, underscores and hyphens, so ``Shih-Tzu``,
    ``shih_tzu`` and ``042.Shih_Tzu`` all match a class named "Shih-Tzu". A loose form shared by two classes matches
    neither.

    Args:
        folders: Folder names.
        classes: The classes, in index order.

    Returns:
        ``(matched, unknown)``: each matched folder's class index, and the folders that match no class.

    Raises:
        DatasetError: If two folders match the same class.
    """
    exact: dict[str, int] = {}
    for index, c in enumerate(classes):
        exact.setdefault(c.folder, index)
    for index, c in enumerate(classes):
        exact.setdefault(c.name, index)
    loose: dict[str, int | None] = {}
    for index, c in enumerate(classes):
        for key in {_loose(c.folder), _loose(c.name)}:
            loose[key] = index if loose.get(key, index) == index else None  # None: ambiguous
    matched: dict[str, int] = {}
    unknown: list[str] = []
    owner: dict[int, str] = {}
    for folder in sorted(folders, key=natural_key):
        index = exact.get(folder, loose.get(_loose(folder)))
        if index is None:
            unknown.append(folder)
            continue
        if index in owner:
            raise DatasetError(
                f"Folders {owner[index]!r} and {folder!r} both match class {classes[index].name!r} "
                f"({classes[index].folder}); keep one folder per class."
            )
        owner[index] = folder
        matched[folder] = index
    return matched, unknown


def _subfolders(root: Path) -> list[str]:
    return [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]


def _unknown_error(root: Path, unknown: list[str], classes: list[ClassInfo]) -> DatasetError:
    shown = ", ".join(repr(f) for f in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
    known = ", ".join(f"{c.folder} ({c.name})" if c.folder != c.name else c.name for c in classes[:10])
    if len(classes) > 10:
        known += f", ... ({len(classes) - 10} more)"
    if any(f in _SPLIT_NAMES for f in unknown):
        hint = f"It looks like a data folder with splits: point at one split instead, e.g. {str(root / 'test')!r}."
    else:
        hint = "Rename them to a class's folder id or name, remove them, or skip them (--skip-unknown-folders)."
    return DatasetError(
        f"{len(unknown)} folder(s) in {str(root)!r} match none of the model's {len(classes)} classes: {shown}. "
        f"The model knows: {known}. {hint}"
    )


def load_labelled(
    folder: str | os.PathLike[str],
    classes: Sequence[ClassInfo | str],
    *,
    strict: bool = False,
    check_images: bool = True,
    unknown: str = "error",
) -> LabelledFolder:
    """Reads a class-per-folder tree as a whole, labelled against ``classes`` (see :func:`match_folders`).

    Args:
        folder: The tree: one subfolder per class, images found recursively in each.
        classes: The class list, e.g. ``load_model(DIR).classes``; plain strings are both folder id and name.
        strict: Raise on the first unreadable image instead of leaving it out.
        check_images: Decode every image up front to find unreadable ones.
        unknown: ``"error"`` (default) to refuse folders that match no class, ``"skip"`` to leave them out.

    Returns:
        The labelled images, with the folders and classes that found no partner.

    Raises:
        DatasetError: A missing or empty folder, a folder matching no class (with ``unknown="error"``), two folders
            for one class, a matched folder without images, or no folder matching any class.
        UnreadableImageError: With ``strict``, the unreadable images.
    """
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"Folder {str(root)!r} does not exist.")
    class_list = _as_classes(classes)
    folders = _subfolders(root)
    if not folders:
        raise DatasetError(
            f"Found no class folders in {str(root)!r}. Expected one subfolder per class, named by the class's "
            f"folder id or name, e.g. {str(root / class_list[0].folder)!r}, each holding images."
        )
    matched, unmatched = match_folders(folders, class_list)
    if unmatched and (unknown == "error" or not matched):
        raise _unknown_error(root, unmatched, class_list)
    samples: list[Sample] = []
    for name, index in sorted(matched.items(), key=lambda item: item[1]):
        images = find_images(root / name)
        if not images:
            raise DatasetError(
                f"Class folder {str(root / name)!r} has no images. Supported extensions are: "
                f"{', '.join(IMAGE_EXTENSIONS)} (any case). Add images or remove the folder."
            )
        samples += [Sample(path, index) for path in images]
    skipped: list[tuple[Path, str]] = []
    if check_images:
        samples, skipped = readable_samples(samples, strict=strict)
        if not samples:
            raise DatasetError(f"Every image in {str(root)!r} is unreadable; nothing is left to evaluate.")
    found = set(matched.values())
    return LabelledFolder(
        root=root,
        classes=class_list,
        samples=samples,
        folders=matched,
        missing=[c for i, c in enumerate(class_list) if i not in found],
        unknown=unmatched,
        skipped=skipped,
    )
