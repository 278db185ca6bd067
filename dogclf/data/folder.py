"""Finding classes and samples in a folder tree: the dogImages layout or any ImageFolder tree."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dogclf._sorting import natural_key
from dogclf.data.images import IMAGE_EXTENSIONS, find_unreadable, is_image_file
from dogclf.errors import DatasetError, UnreadableImageError

__all__ = [
    "ClassInfo",
    "DataSplits",
    "Sample",
    "check_fraction",
    "check_names",
    "drop_unreadable",
    "files_digest",
    "find_classes",
    "find_images",
    "load_splits",
    "make_samples",
    "read_names_file",
    "readable_samples",
    "stratified_split",
]

_NUMBERED = re.compile(r"^(\d+)\.(.+)$")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ClassInfo:
    """One class: its folder name and its display name."""

    folder: str
    name: str


@dataclass(frozen=True)
class Sample:
    """One image file and its class index."""

    path: Path
    label: int


@dataclass
class DataSplits:
    """The samples of every split, labelled with one class list taken from ``train/``.

    Attributes:
        root: The data folder.
        classes: Classes in index order.
        train: Training samples.
        valid: Validation samples (from ``valid/`` or a stratified split of train).
        test: Test samples, if a ``test/`` folder exists.
        skipped: ``(path, reason)`` of every file left out because it could not be read.
        valid_source: ``"valid/"``, ``"fraction 0.2 of train"`` or ``"none"``.
    """

    root: Path
    classes: list[ClassInfo]
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    valid_source: str = "none"

    @property
    def class_names(self) -> list[str]:
        """Display names in index order."""
        return [c.name for c in self.classes]

    def files_digest(self, name: str) -> str:
        """A short digest of which files a split holds and their labels (paths relative to ``root``)."""
        if name not in SPLITS:
            raise DatasetError(f"Unknown split {name!r}; choose one of {', '.join(SPLITS)}.")
        return files_digest(getattr(self, name), self.root)

    def split(self, name: str) -> list[Sample]:
        """Returns the samples of ``train``, ``valid`` or ``test``."""
        if name not in SPLITS:
            raise DatasetError(f"Unknown split {name!r}; choose one of {', '.join(SPLITS)}.")
        samples: list[Sample] = getattr(self, name)
        if not samples:
            hint = ""
            if name != "train" and not (self.root / "train").is_dir():
                hint = (
                    f" {self.root} is one class-folder tree, read as the training set; to evaluate a model on all of "
                    "it, use dogclf.evaluate(classifier, folder) or dogclf.load_labelled(folder, classifier.classes)."
                )
            raise DatasetError(f"Split {name!r} of {self.root} has no images (looked for {self.root / name}).{hint}")
        return samples


def files_digest(samples: Sequence[Sample], root: str | os.PathLike[str]) -> str:
    """``"sha256:<16 hex>"`` of the samples' paths (relative to ``root``, in order), sizes and labels.

    The same files under another folder give the same digest; a renamed, added, removed or resized file changes it.
    """
    digest = hashlib.sha256()
    for sample in samples:
        try:
            name = sample.path.relative_to(root).as_posix()
        except ValueError:
            name = sample.path.as_posix()
        try:
            size = sample.path.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{sample.label}\t{size}\t{name}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def read_names_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Reads a map from class folder to display name.

    Accepts a JSON object (``{"n02086240": "Shih-Tzu", ...}``) or a text file with
    one ``<folder> <display name>`` per line (tab or spaces; ``#`` comments).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"Cannot read names file {str(path)!r}: {exc}") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: '[[[[...' nested too deeply
            raise DatasetError(f"Names file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DatasetError(f"Names file {str(path)!r} must be a JSON object of folder -> name strings.")
        return {str(k): v for k, v in data.items()}
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{number}: expected '<folder> <display name>', got {line!r}")
        names[parts[0]] = parts[1].strip()
    return names


def check_names(
    names: Mapping[str, str],
    classes: list[ClassInfo],
    *,
    source: str | os.PathLike[str] | None = None,
    folder: str | os.PathLike[str] = "",
) -> None:
    """Checks that a names map fits the class folders it is applied to.

    A map that names every class folder may hold more ids (one file for a larger data set); one that leaves some
    folders unnamed may not also hold ids that match no folder, since that is a wrong or mistyped file.

    Raises:
        DatasetError: Naming the ids that match no folder and the folders left unnamed.
    """
    folders = {c.folder for c in classes}
    unmatched = sorted((k for k in names if k not in folders), key=natural_key)
    unnamed = [c.folder for c in classes if c.folder not in names]
    if not unmatched or not unnamed:
        return
    what = f"Names file {str(source)!r}" if source is not None else "The names map"
    raise DatasetError(
        f"{what} does not fit the class folders of {str(folder)!r}: {len(unmatched)} of its {len(names)} ids "
        f"match no folder ({_some(unmatched)}), and {len(unnamed)} of the {len(classes)} folders have no name in it "
        f"({_some(unnamed)}). Its ids must be the class folder names, e.g. {classes[0].folder!r}; fix the file or "
        "pass the names file of this data set."
    )


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def find_classes(train_dir: str | os.PathLike[str], names: Mapping[str, str] | None = None) -> list[ClassInfo]:
    """Lists the classes of a split folder, in index order.

    In the dogImages layout (every folder ``NNN.Breed_Name``) classes are ordered
    by number and named from the rest, underscores as spaces. Otherwise folders
    are naturally sorted and named by ``names`` where it has them.

    Raises:
        DatasetError: If the folder is missing or has no class folders.
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise DatasetError(f"Folder {str(train_dir)!r} does not exist.")
    folders = [e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")]
    if not folders:
        raise DatasetError(
            f"Found no class folders in {str(train_dir)!r}. Expected one subfolder per class, e.g. "
            f"{train_dir / '001.Affenpinscher'} or {train_dir / 'n02086240'}, each holding images."
        )
    names = names or {}
    numbered = {f: m for f in folders if (m := _NUMBERED.match(f))}
    if len(numbered) == len(folders):
        by_number: dict[int, str] = {}
        for folder, match in numbered.items():
            number = int(match.group(1))
            if number in by_number:
                raise DatasetError(
                    f"Class folders {by_number[number]!r} and {folder!r} in {str(train_dir)!r} share the number "
                    f"{number}; numbered (dogImages) folders must have unique numbers."
                )
            by_number[number] = folder
        ordered = [by_number[n] for n in sorted(by_number)]
        classes = [ClassInfo(f, names.get(f) or numbered[f].group(2).replace("_", " ")) for f in ordered]
    else:
        classes = [ClassInfo(f, names.get(f, f)) for f in sorted(folders, key=natural_key)]
    _check_unique_names(classes, train_dir)
    return classes


def _check_unique_names(classes: list[ClassInfo], folder: Path) -> None:
    seen: dict[str, str] = {}
    for c in classes:
        if c.name in seen:
            raise DatasetError(
                f"Class folders {seen[c.name]!r} and {c.folder!r} in {str(folder)!r} have the same display name "
                f"{c.name!r}; give each class its own name (check the names file)."
            )
        seen[c.name] = c.folder


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder``, recursively, naturally sorted; hidden files and folders are left out."""
    images: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        images += [Path(dirpath) / name for name in sorted(filenames, key=natural_key) if is_image_file(name)]
    return images


def make_samples(split_dir: str | os.PathLike[str], classes: list[ClassInfo], *, split: str = "train") -> list[Sample]:
    """Collects the images of one split folder, labelled by ``classes``.

    Files without an image extension (``README.txt``, ``Thumbs.db``) and hidden
    files are ignored.

    Raises:
        DatasetError: A class folder that ``classes`` (train/) lacks, or an empty class folder.
    """
    split_dir = Path(split_dir)
    index = {c.folder: i for i, c in enumerate(classes)}
    present = sorted(
        (e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")), key=natural_key
    )
    unknown = [f for f in present if f not in index]
    if unknown:
        raise DatasetError(
            f"{split}/ has class folder(s) that train/ lacks: {', '.join(str(split_dir / f) for f in unknown[:5])}. "
            "Every split uses the class list of train/; add the class to train/ or remove the folder."
        )
    samples: list[Sample] = []
    for folder in present:
        images = find_images(split_dir / folder)
        if not images:
            raise DatasetError(
                f"Class folder {str(split_dir / folder)!r} has no images. Supported extensions are: "
                f"{', '.join(IMAGE_EXTENSIONS)} (any case). Add images or remove the folder."
            )
        samples += [Sample(p, index[folder]) for p in images]
    return samples


def check_fraction(fraction: float) -> None:
    """Checks a valid fraction (0.2 holds out 20%).

    Raises:
        DatasetError: Unless ``0 < fraction < 1``.
    """
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise DatasetError(f"valid fraction must be between 0 and 1 (exclusive), e.g. 0.2, got {fraction!r}")


def stratified_split(samples: list[Sample], fraction: float, *, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Splits samples into (train, valid), taking ``fraction`` of every class for valid.

    Deterministic for a given ``seed``. Classes with one image stay in train.
    """
    check_fraction(fraction)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    train: list[Sample] = []
    valid: list[Sample] = []
    for label in sorted(by_class):
        group = list(by_class[label])
        rng.shuffle(group)
        n_valid = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        valid += group[:n_valid]
        train += group[n_valid:]
    key = lambda s: (s.label, natural_key(str(s.path)))  # noqa: E731
    return sorted(train, key=key), sorted(valid, key=key)


def load_splits(
    data_dir: str | os.PathLike[str],
    *,
    valid_fraction: float | None = None,
    names: Mapping[str, str] | str | os.PathLike[str] | None = None,
    seed: int = 0,
    strict: bool = False,
    check_images: bool = True,
    require_valid: bool = True,
) -> DataSplits:
    """Reads a data folder into labelled splits.

    ``data_dir`` either holds ``train/`` (and optionally ``valid/`` or ``val/``, and ``test/``),
    each with one subfolder per class, or is itself one class-per-subfolder tree
    used as the training set (then ``valid_fraction`` carves out validation).

    Args:
        data_dir: The data folder.
        valid_fraction: Hold out this fraction of each training class as the
            validation split; for folders without ``valid/``.
        names: Folder -> display-name map, or a names file (see :func:`read_names_file`).
        seed: Seed of the stratified split.
        strict: Raise on the first unreadable image instead of skipping it.
        check_images: Decode every image up front to find unreadable ones.
        require_valid: Raise if there is no validation split.

    Returns:
        The splits.

    Raises:
        DatasetError: A bad layout, with the folder named.
        UnreadableImageError: With ``strict``, the first unreadable image.
    """
    if valid_fraction is not None:
        check_fraction(valid_fraction)
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"Data folder {str(root)!r} does not exist.")
    name_map = names if isinstance(names, Mapping) else read_names_file(names) if names else None
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    if not split_layout and any((root / s).is_dir() for s in ("valid", "val", "test")):
        raise DatasetError(f"{str(root)!r} has valid/ (or val/) or test/ but no train/ folder.")
    classes = find_classes(train_dir, name_map)
    if name_map:
        check_names(name_map, classes, source=names if not isinstance(names, Mapping) else None, folder=train_dir)
    if len(classes) < 2:
        raise DatasetError(f"{str(train_dir)!r} has {len(classes)} class folder; a classifier needs at least 2.")
    train = make_samples(train_dir, classes, split="train")
    valid: list[Sample] = []
    test: list[Sample] = []
    valid_dirs = [root / name for name in ("valid", "val") if split_layout and (root / name).is_dir()]
    if len(valid_dirs) > 1:
        raise DatasetError(f"{str(root)!r} has both valid/ and val/; keep one validation folder.")
    has_valid = bool(valid_dirs)
    if has_valid and valid_fraction:
        raise DatasetError(
            f"{str(root)!r} has a valid/ folder and a valid fraction ({valid_fraction}) was given; "
            "use one or the other."
        )
    if has_valid:
        valid = make_samples(valid_dirs[0], classes, split=valid_dirs[0].name)
        valid_source = f"{valid_dirs[0].name}/"
    elif valid_fraction:
        train, valid = stratified_split(train, valid_fraction, seed=seed)
        valid_source = f"fraction {valid_fraction:g} of train (seed {seed})"
    elif require_valid:
        raise DatasetError(
            f"{str(root)!r} has no valid/ folder. Add one, or hold out part of train with --valid-fraction 0.2 "
            "(valid_fraction=0.2 in Python)."
        )
    else:
        valid_source = "none"
    if split_layout and (root / "test").is_dir():
        test = make_samples(root / "test", classes, split="test")
    splits = DataSplits(root, classes, train, valid, test, valid_source=valid_source)
    if check_images:
        _drop_unreadable(splits, strict=strict)
    return splits


def _drop_unreadable(splits: DataSplits, *, strict: bool) -> None:
    everything = splits.train + splits.valid + splits.test
    drop_unreadable(splits, find_unreadable([s.path for s in everything]), strict=strict)


def _refuse_in_strict_mode(bad: Sequence[tuple[Path, str]], *, strict: bool) -> None:
    if strict and bad:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UnreadableImageError(
            f"{len(bad)} unreadable image file(s) (strict mode):\n{listing}{more}\n"
            "Fix or remove them, or run without --strict to skip them."
        )


def drop_unreadable(splits: DataSplits, bad: Sequence[tuple[Path, str]], *, strict: bool) -> None:
    """Leaves the files of ``bad`` (``(path, reason)``) out of ``splits`` and records them in ``splits.skipped``.

    Raises:
        UnreadableImageError: With ``strict``, listing every file of ``bad``.
        DatasetError: If a class is left without training images.
    """
    if not bad:
        return
    _refuse_in_strict_mode(bad, strict=strict)
    bad_paths = {p for p, _ in bad}
    splits.train = [s for s in splits.train if s.path not in bad_paths]
    splits.valid = [s for s in splits.valid if s.path not in bad_paths]
    splits.test = [s for s in splits.test if s.path not in bad_paths]
    splits.skipped = [*splits.skipped, *bad]
    left = {s.label for s in splits.train}
    empty = [c.folder for i, c in enumerate(splits.classes) if i not in left]
    if empty:
        raise DatasetError(
            f"Every image of class folder(s) {', '.join(empty)} in train/ is unreadable; nothing is left to train on."
        )


def readable_samples(samples: list[Sample], *, strict: bool) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decodes every sample's image once; returns the readable samples and ``(path, reason)`` of the others.

    Raises:
        UnreadableImageError: With ``strict``, listing up to 20 unreadable files.
    """
    bad = find_unreadable([s.path for s in samples])
    _refuse_in_strict_mode(bad, strict=strict)
    bad_paths = {p for p, _ in bad}
    return [s for s in samples if s.path not in bad_paths], bad
