"""The training job's source directory, ``sourcedir.tar.gz``: what the container runs.

Layout (the PyTorch training container unpacks it into ``/opt/ml/code`` and runs ``train.py`` from there)::

    train.py                 # the entry point (dogclf.sagemaker.entry.ENTRY_SOURCE)
    requirements.txt         # what the container lacks (it has torch, torchvision, numpy); pip-installed first
    dogclf/...               # dogclf's own source, so the job needs no dogclf release
    <plugin packages>        # for a plugin backbone: its import packages and its .dist-info (entry point)
    dogclf-names.txt         # the --names file, when one is given

Nothing else is copied: no credentials, no data, no caches.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dogclf.sagemaker.entry import ENTRY_SCRIPT, ENTRY_SOURCE

__all__ = ["NAMES_FILE", "TRAINING_REQUIREMENTS", "SourceDir", "build_source_dir", "training_requirements"]

# dogclf's third-party needs when training in the PyTorch container; keep in step with pyproject.toml (a test checks).
TRAINING_REQUIREMENTS = (
    "safetensors>=0.4",
    "pillow>=10",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "openvino>=2024.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'",  # the default engine on x86
)
NAMES_FILE = "dogclf-names.txt"


@dataclass(frozen=True)
class SourceDir:
    """A built ``sourcedir.tar.gz``.

    Attributes:
        archive: The tar.gz.
        requirements: The lines of its ``requirements.txt``.
        files: How many files it holds.
        size: Its size in bytes.
        plugin: The vendored plugin distribution (``name version``), or ``""``.
    """

    archive: Path
    requirements: list[str]
    files: int
    size: int
    plugin: str = ""


def training_requirements(backbone: str, plugin_requires: list[str]) -> list[str]:
    """``requirements.txt`` of the source directory: dogclf's training needs, timm for ``timm/``, a plugin's."""
    from dogclf.serving.package import TIMM_REQUIREMENT, merge_requirements

    lines = list(TRAINING_REQUIREMENTS)
    if backbone.startswith("timm/"):
        lines.append(TIMM_REQUIREMENT)
    return merge_requirements(lines + plugin_requires)


def build_source_dir(
    folder: str | os.PathLike[str], *, backbone: str, names_file: str | os.PathLike[str] | None = None
) -> SourceDir:
    """Writes ``folder/sourcedir.tar.gz`` for a job that trains ``backbone``.

    Args:
        folder: Where to write it (created).
        backbone: The backbone's registered name; a plugin's package is vendored with it.
        names_file: A ``--names`` file to ship as :data:`NAMES_FILE`.

    Returns:
        What was written.

    Raises:
        UnknownBackboneError: The backbone is not installed here.
        PackageError: A backbone registered in-process (not a plugin), which the container could not rebuild.
    """
    from dogclf.backbones.registry import get_backbone
    from dogclf.serving.package import ArchiveWriter, add_vendored, find_plugin

    spec = get_backbone(backbone)
    plugin = find_plugin(spec.name, spec.distribution or "", Path(backbone))
    requirements = training_requirements(spec.name, plugin.requires if plugin else [])
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "sourcedir.tar.gz"
    fd, tmp_name = tempfile.mkstemp(prefix=".sourcedir.", suffix=".tmp", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            writer = ArchiveWriter(tar)
            writer.add_bytes(ENTRY_SCRIPT, ENTRY_SOURCE.encode(), note="entry point")
            writer.add_bytes("requirements.txt", "".join(f"{r}\n" for r in requirements).encode(), note="pip")
            add_vendored(writer, plugin, prefix="")
            if names_file is not None:
                writer.add_file(NAMES_FILE, Path(names_file), note="class names")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    files = sum(entry.files for entry in writer.report())
    return SourceDir(
        archive=target,
        requirements=requirements,
        files=files,
        size=target.stat().st_size,
        plugin=f"{plugin.name} {plugin.version}" if plugin else "",
    )
