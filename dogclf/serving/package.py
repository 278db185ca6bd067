"""``dogclf package``: a model directory as the ``model.tar.gz`` the AWS PyTorch inference container serves.

Archive layout::

    config.json                  # the model directory's two files, at the root
    model.safetensors
    code/inference.py            # re-exports the four handlers of dogclf.serving.handlers
    code/requirements.txt        # what the container lacks (it has torch and torchvision); pip-installed at start-up
    code/dogclf/...              # dogclf's own source, so the container needs no access to this repository
    code/<plugin modules>        # for a plugin backbone: its import packages,
    code/<plugin>.dist-info/     # and its metadata with the entry point, found by importlib.metadata on sys.path

The container puts ``code/`` first on ``PYTHONPATH``, so the vendored dogclf is the one it imports.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dogclf.artifact.config import ModelConfig
from dogclf.artifact.store import NOVELTY_NAME, load_config
from dogclf.errors import DogclfError

__all__ = [
    "CONTAINER_PROVIDED",
    "INFERENCE_SOURCE",
    "SERVING_REQUIREMENTS",
    "ArchiveEntry",
    "ArchiveWriter",
    "FolderWriter",
    "PackageError",
    "PackageReport",
    "format_report",
    "add_vendored",
    "find_plugin",
    "merge_requirements",
    "package_model",
    "serving_requirements",
    "write_serving_code",
]

# dogclf's own third-party needs when serving; keep in step with pyproject.toml (a test checks).
# OpenVINO is the default engine on x86 CPUs (the marker keeps it off ARM instances).
OPENVINO_REQUIREMENT = "openvino>=2024.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'"
SERVING_REQUIREMENTS = ("safetensors>=0.4", "pillow>=10", OPENVINO_REQUIREMENT)
TIMM_REQUIREMENT = "timm>=1.0"
# Provided by the AWS PyTorch inference image, so never written to requirements.txt (pip would replace torch).
CONTAINER_PROVIDED = frozenset({"torch", "torchvision", "torchaudio", "dogclf"})

INFERENCE_SOURCE = '''"""SageMaker entry point written by `dogclf package`: the handlers of the vendored dogclf."""

from dogclf.serving.handlers import input_fn, model_fn, output_fn, predict_fn

__all__ = ["input_fn", "model_fn", "output_fn", "predict_fn"]
'''

_MODEL_FILES = ("config.json", "model.safetensors")
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackageError(DogclfError, ValueError):
    """A model directory or output path that cannot be packaged."""


@dataclass(frozen=True)
class ArchiveEntry:
    """One group of archive members, as reported: a file, or a vendored folder.

    Attributes:
        name: The archive path (folders end with ``/``).
        size: Uncompressed bytes.
        files: How many files it holds.
        note: What it is.
    """

    name: str
    size: int
    files: int = 1
    note: str = ""


@dataclass(frozen=True)
class PackageReport:
    """What :func:`package_model` wrote.

    Attributes:
        archive: The archive's path.
        size: The archive's size in bytes (compressed).
        entries: The members, grouped by top-level file or folder.
        requirements: The lines of ``code/requirements.txt``.
        notes: Things worth knowing (e.g. a plugin version that differs from the one the model recorded).
    """

    archive: Path
    size: int
    entries: list[ArchiveEntry]
    requirements: list[str]
    notes: list[str] = field(default_factory=list)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _walk(root: Path) -> Iterator[Path]:
    """The files under ``root``, sorted, without hidden files, ``__pycache__`` folders or compiled files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.endswith(_SKIP_SUFFIXES) and not filename.startswith("."):
                yield Path(dirpath) / filename


class ArchiveWriter:
    """A tar.gz being written, with normalised owners and modes, tallying members by group."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.mtime = int(time.time())  # for generated members (tar warns about the 1970 default)
        self.entries: dict[str, list[int]] = {}
        self.notes: dict[str, str] = {}

    def _tally(self, group: str, size: int, note: str) -> None:
        tally = self.entries.setdefault(group, [0, 0])
        tally[0] += size
        tally[1] += 1
        self.notes.setdefault(group, note)

    def add_bytes(self, name: str, data: bytes, *, group: str | None = None, note: str = "") -> None:
        """Adds a generated file (mode 644) under ``name``, tallied in ``group`` (default: its own name)."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = self.mtime
        self.tar.addfile(info, io.BytesIO(data))
        self._tally(group or name, len(data), note)

    def add_file(self, name: str, path: Path, *, group: str | None = None, note: str = "") -> None:
        """Adds the contents of ``path``; a symbolic link is followed, so the archive holds the file, not the link."""
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise PackageError(f"Cannot read {str(path)!r} to put it in the archive: {exc.strerror or exc}.") from exc
        with handle:
            info = self.tar.gettarinfo(arcname=name, fileobj=handle)  # fstat of the open file: the link's target
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            self.tar.addfile(info, handle)
        self._tally(group or name, info.size, note)

    def add_tree(self, prefix: str, root: Path, *, note: str) -> None:
        """Adds every file under ``root`` (no hidden files, caches or compiled files) under ``prefix/``."""
        for path in _walk(root):
            self.add_file(f"{prefix}/{path.relative_to(root).as_posix()}", path, group=f"{prefix}/", note=note)

    def report(self) -> list[ArchiveEntry]:
        """The members written so far, one entry per group."""
        return [ArchiveEntry(name, size, files, self.notes[name]) for name, (size, files) in self.entries.items()]


class FolderWriter(ArchiveWriter):
    """The same members written as files under a folder (``code/`` of a model directory, a source directory)."""

    def __init__(self, root: Path) -> None:  # no tar: every member is written under root
        self.root = root
        self.entries = {}
        self.notes = {}

    def add_bytes(self, name: str, data: bytes, *, group: str | None = None, note: str = "") -> None:
        """Writes ``data`` to ``root/name``."""
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self._tally(group or name, len(data), note)

    def add_file(self, name: str, path: Path, *, group: str | None = None, note: str = "") -> None:
        """Copies the file at ``path`` to ``root/name``."""
        self.add_bytes(name, path.read_bytes(), group=group, note=note)


@dataclass(frozen=True)
class _Plugin:
    """A plugin distribution to vendor: its metadata and the import roots it provides."""

    name: str
    version: str
    metadata: str
    entry_points: str
    roots: list[tuple[str, Path]]  # (archive name under code/, source path: a package folder or a module file)
    requires: list[str]


def find_plugin(backbone: str, distribution_label: str, model_dir: Path) -> _Plugin | None:
    """The installed plugin distribution that provides ``backbone``, or ``None`` for built-in and timm backbones.

    Raises:
        PackageError: For a backbone that neither dogclf, timm nor an installed plugin provides.
    """
    from dogclf.backbones.registry import ENTRY_POINT_GROUP
    from dogclf.backbones.timm_backbones import PREFIX as TIMM_PREFIX

    if backbone.startswith(TIMM_PREFIX) or distribution_label.startswith("dogclf (built-in)"):
        return None
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == backbone]
    dist = getattr(found[0], "dist", None) if found else None
    if dist is None:
        raise PackageError(
            f"Backbone {backbone!r} of {str(model_dir)!r} comes from {distribution_label or 'an unknown source'}, "
            f"not from an installed plugin package (entry point group {ENTRY_POINT_GROUP!r}), so dogclf cannot put "
            "it in the archive and the container could not rebuild the network. Make it a plugin package and "
            "install it here (see docs/backbones.md), then package again."
        )
    name, version = dist.metadata["Name"], dist.version
    entry_points = dist.read_text("entry_points.txt") or ""
    tops = {ep.module.split(".")[0] for ep in dist.entry_points}
    tops.update(line.strip() for line in (dist.read_text("top_level.txt") or "").splitlines() if line.strip())
    for file in dist.files or []:
        top = file.parts[0]
        if len(file.parts) > 1 and not top.endswith((".dist-info", ".egg-info", ".data")) and top != "..":
            tops.add(top)
        elif len(file.parts) == 1 and file.suffix == ".py" and not top.startswith("__editable__"):
            tops.add(file.stem)
    roots: list[tuple[str, Path]] = []
    for top in sorted(tops):
        spec = importlib.util.find_spec(top)
        if spec is None:
            raise PackageError(f"Plugin {name} {version} names module {top!r}, which cannot be found here.")
        if spec.submodule_search_locations:
            roots += [(top, Path(location)) for location in spec.submodule_search_locations]
        elif spec.origin and os.path.isfile(spec.origin):
            roots.append((Path(spec.origin).name, Path(spec.origin)))
        else:
            raise PackageError(f"Plugin {name} {version}: module {top!r} has no source file to copy ({spec.origin}).")
    return _Plugin(
        name=name,
        version=version,
        metadata=dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        entry_points=entry_points,
        roots=roots,
        requires=list(dist.requires or []),
    )


def merge_requirements(lines: list[str]) -> list[str]:
    """Drops extras-only and container-provided requirements; joins the specifiers of a repeated plain requirement."""
    kept: list[list[str]] = []  # [name, specifier, ...] for plain requirements, [whole line] for the rest
    plain: dict[str, list[str]] = {}
    for line in lines:
        requirement, _, marker = line.partition(";")
        match = _REQUIREMENT_NAME.match(requirement)
        if "extra" in marker or not match or _canonical(match.group(1)) in CONTAINER_PROVIDED:
            continue
        key, spec = _canonical(match.group(1)), requirement[match.end() :].strip()
        if marker.strip() or spec.startswith("["):
            kept.append([line.strip()])
        elif key in plain:
            if spec and spec not in plain[key]:
                plain[key].append(spec)
        else:
            plain[key] = [match.group(1), *([spec] if spec else [])]
            kept.append(plain[key])
    return [item[0] + ",".join(item[1:]) for item in kept]


def _format_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def package_model(
    model_dir: str | os.PathLike[str], output: str | os.PathLike[str], *, overwrite: bool = False
) -> PackageReport:
    """Writes ``model.tar.gz`` for the AWS PyTorch inference container (see the module docstring for the layout).

    The model is loaded first (on CPU), so a directory whose weights do not fit its backbone is refused here rather
    than in the endpoint. The archive is written to a temporary file next to ``output`` and renamed into place.

    Args:
        model_dir: A model directory written by ``dogclf train``.
        output: The archive to write (conventionally ``model.tar.gz``).
        overwrite: Replace an existing ``output``.

    Returns:
        What was written.

    Raises:
        ModelDirError: The model directory is missing files, is malformed, or its backbone is not installed.
        PackageError: ``output`` exists (without ``overwrite``) or is a folder, or the backbone cannot be vendored.
    """
    from dogclf.classifier import load_model

    root = Path(model_dir)
    out = Path(output)
    if out.is_dir():
        raise PackageError(
            f"Output {str(out)!r} is a folder; name the archive file, e.g. {str(out / 'model.tar.gz')!r}."
        )
    if out.exists() and not overwrite:
        raise PackageError(
            f"Output {str(out)!r} already exists; pass --overwrite to replace it, or choose another name."
        )
    if not out.parent.is_dir():
        raise PackageError(f"Output folder {str(out.parent)!r} does not exist; create it first.")
    classifier = load_model(root, device="cpu")
    config = classifier.model_config or load_config(root)
    plugin = find_plugin(config.backbone, classifier.spec.distribution or "", root)
    notes: list[str] = []
    recorded = config.backbone_distribution or ""
    if plugin is not None and recorded and recorded != f"{plugin.name} {plugin.version}":
        notes.append(f"the model was trained with {recorded}; packaging the installed {plugin.name} {plugin.version}")
    requirements = serving_requirements(config.backbone, plugin)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            archive = ArchiveWriter(tar)
            for name in _MODEL_FILES:
                archive.add_file(name, root / name, note="model")
            if (root / NOVELTY_NAME).is_file():
                archive.add_file(NOVELTY_NAME, root / NOVELTY_NAME, note="novelty score")
            _add_serving_code(archive, requirements, plugin)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return PackageReport(
        archive=out, size=out.stat().st_size, entries=archive.report(), requirements=requirements, notes=notes
    )


def serving_requirements(backbone: str, plugin: _Plugin | None) -> list[str]:
    """The lines of ``code/requirements.txt``: dogclf's serving needs, timm for ``timm/`` backbones, a plugin's."""
    requirements = list(SERVING_REQUIREMENTS)
    if backbone.startswith("timm/"):
        requirements.append(TIMM_REQUIREMENT)
    return merge_requirements(requirements + (plugin.requires if plugin else []))


def add_vendored(sink: ArchiveWriter, plugin: _Plugin | None, *, prefix: str = "code") -> None:
    """Adds dogclf's source and a plugin backbone's import packages and metadata under ``prefix/`` ("" for the top)."""
    from dogclf._version import __version__

    def under(name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    sink.add_tree(under("dogclf"), Path(__file__).parent.parent, note=f"dogclf {__version__} source")
    if plugin is None:
        return
    label = f"plugin {plugin.name} {plugin.version}"
    for name, source in plugin.roots:
        if source.is_dir():
            sink.add_tree(under(name), source, note=label)
        else:
            sink.add_file(under(name), source, note=label)
    info = under(f"{re.sub(r'[-_.]+', '_', plugin.name)}-{plugin.version}.dist-info")
    sink.add_bytes(f"{info}/METADATA", plugin.metadata.encode(), group=f"{info}/", note=label)
    sink.add_bytes(f"{info}/entry_points.txt", plugin.entry_points.encode(), group=f"{info}/", note=label)


def _add_serving_code(sink: ArchiveWriter, requirements: list[str], plugin: _Plugin | None) -> None:
    sink.add_bytes("code/inference.py", INFERENCE_SOURCE.encode(), note="the four SageMaker handlers")
    sink.add_bytes(
        "code/requirements.txt",
        "".join(f"{line}\n" for line in requirements).encode(),
        note="pip-installed by the container at start-up",
    )
    add_vendored(sink, plugin)


def write_serving_code(model_dir: str | os.PathLike[str], config: ModelConfig, distribution: str) -> list[str]:
    """Writes the ``code/`` folder ``dogclf package`` puts in the archive into a model directory itself.

    A training job's ``model.tar.gz`` (the contents of ``SM_MODEL_DIR``) then deploys to the PyTorch inference
    container as it is, with no repack step.

    Args:
        model_dir: The model directory (``config.json`` and ``model.safetensors`` already written).
        config: Its config (:func:`dogclf.artifact.load_config`).
        distribution: Where its backbone comes from (``BackboneSpec.distribution``).

    Returns:
        The lines of ``code/requirements.txt``.

    Raises:
        PackageError: A backbone that cannot be vendored (registered in-process, not a plugin).
    """
    root = Path(model_dir)
    plugin = find_plugin(config.backbone, distribution, root)
    requirements = serving_requirements(config.backbone, plugin)
    shutil.rmtree(root / "code", ignore_errors=True)
    _add_serving_code(FolderWriter(root), requirements, plugin)
    return requirements


def format_report(report: PackageReport) -> str:
    """The lines ``dogclf package`` prints."""
    files = sum(e.files for e in report.entries)
    width = max(len(e.name) for e in report.entries)
    lines = [f"Wrote {report.archive} ({_format_size(report.size)}, {files} files):"]
    for entry in report.entries:
        count = f" in {entry.files} files" if entry.files > 1 else ""
        lines.append(f"  {entry.name:<{width}}  {_format_size(entry.size):>9}{count}  {entry.note}".rstrip())
    lines.append("code/requirements.txt: " + (", ".join(report.requirements) or "(empty)"))
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)
