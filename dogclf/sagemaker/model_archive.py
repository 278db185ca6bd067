"""Unpacking a job's ``model.tar.gz`` into a model directory, all or nothing.

The archive is extracted into a staging folder next to the target, checked to be a dogclf model, and only then moved
into place with renames. A corrupt, truncated or non-gzip download therefore leaves the target as it was (and no
half-written model that would block the retry), and ``--overwrite`` swaps a whole model for another.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

__all__ = ["unpack_model"]


def _extract(archive: Path, folder: Path, label: str) -> None:
    """Extracts ``archive`` into ``folder``, refusing what is not a readable archive holding a dogclf model."""
    from dogclf.artifact import CONFIG_NAME, WEIGHTS_NAME
    from dogclf.errors import ModelDirError

    try:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            if not {CONFIG_NAME, WEIGHTS_NAME} <= names:
                raise ModelDirError(f"{label} holds no dogclf model ({CONFIG_NAME} and {WEIGHTS_NAME} are missing).")
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ModelDirError(
            f"{label} is not a readable model.tar.gz ({type(exc).__name__}: {exc}); nothing was written. Download "
            "it again; if it fails the same way, the job's artifact itself is damaged."
        ) from None


def _refuse_occupied(out: Path, overwrite: bool) -> None:
    """Refuses an ``out`` that would lose something: a model (unless ``overwrite``), other files, the working folder."""
    from dogclf.artifact import CONFIG_NAME
    from dogclf.errors import ModelDirError

    if not out.exists():
        return
    if not out.is_dir():
        raise ModelDirError(f"{str(out)!r} is a file, not a folder; choose another --out.")
    holds_model = (out / CONFIG_NAME).exists()
    if holds_model and not overwrite:
        raise ModelDirError(f"{str(out)!r} already holds a model; pass --overwrite or choose another --out.")
    if not holds_model and any(out.iterdir()):
        raise ModelDirError(f"{str(out)!r} is not empty and holds no dogclf model; choose a new or empty --out.")
    here = Path.cwd().resolve()
    if here == out.resolve() or out.resolve() in here.parents:
        raise ModelDirError(f"{str(out)!r} is the working folder (or holds it); choose another --out.")


def _move_into_place(staging: Path, out: Path) -> None:
    """Renames ``staging`` to ``out``; an existing ``out`` is renamed aside first and removed afterwards."""
    aside = None
    if out.exists() or out.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, aside / out.name)
    os.replace(staging, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def unpack_model(
    archive: Path, out_dir: str | os.PathLike[str], *, overwrite: bool = False, source: str | None = None
) -> Path:
    """Unpacks a ``model.tar.gz`` into a model directory and checks it loads as one, writing nothing on failure.

    Args:
        archive: The downloaded ``model.tar.gz``.
        out_dir: The model directory to create: a new or empty folder, or, with ``overwrite``, a model directory
            that is replaced as a whole.
        overwrite: Replace what ``out_dir`` holds.
        source: Where the archive came from (an ``s3://`` URI), named in errors instead of ``archive``.

    Raises:
        ModelDirError: ``out_dir`` already holds a model (without ``overwrite``) or other files, or the archive is
            not a readable tar.gz holding a dogclf model. ``out_dir`` is then unchanged.
    """
    from dogclf.artifact import load_config

    out = Path(out_dir)
    _refuse_occupied(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _extract(archive, staging, source or str(archive))
        load_config(staging)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
