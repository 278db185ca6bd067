"""The manifest of a model directory: the size and SHA-256 of each file ``config.json`` goes with.

A save writes the weights (and the novelty file) first and ``config.json`` last, each by a rename, so the directory is
never half-written file by file; but a crash between the renames leaves new weights beside the old ``config.json``,
which would load silently with the old temperature and class names. ``config.json`` therefore records, under
``"files"``, the digest of every file it was written with; loading checks them and refuses a directory that mixes two
saves. Models saved before the manifest existed have no ``"files"`` and load as before.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import ModelDirError

if TYPE_CHECKING:
    from dogclf.artifact.config import ModelConfig

__all__ = ["MANIFEST_KEY", "check_manifest", "check_manifest_shape", "file_digest", "manifest"]

MANIFEST_KEY = "files"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 lower-case hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(files: Iterable[tuple[str, Path]]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": digest}}`` of ``(name in the model directory, file holding it)`` pairs."""
    return {name: {"bytes": path.stat().st_size, "sha256": file_digest(path)} for name, path in files}


def check_manifest_shape(config: Mapping[str, Any], path: Path) -> None:
    """Checks that ``config["files"]``, when present, is ``{file name: {"bytes": int, "sha256": hex}}``.

    Raises:
        ModelDirError: Naming the entry that is malformed.
    """
    files = config.get(MANIFEST_KEY)
    if files is None:
        return
    if not isinstance(files, Mapping):
        raise _fail(path, MANIFEST_KEY, f"must be a JSON object of file names, got {type(files).__name__}")
    for name, entry in files.items():
        key = f"{MANIFEST_KEY}.{name}"
        if not name or Path(name).name != name:
            raise _fail(path, key, "must name a file inside the model directory")
        if not isinstance(entry, Mapping):
            raise _fail(path, key, 'must be {"bytes": <size>, "sha256": "<64 hex digits>"}')
        size, digest = entry.get("bytes"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(path, key + ".bytes", f"must be an integer >= 0, got {size!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(path, key + ".sha256", f"must be 64 lower-case hex digits, got {digest!r}")


def check_manifest(config: ModelConfig, root: Path) -> None:
    """Checks every file ``config.json`` lists under ``"files"`` against its recorded size and SHA-256.

    A listed file that is absent is left to the code that reads it: the weights are required, a novelty file only
    when ``config.json`` still names one.

    Raises:
        ModelDirError: A listed file differs: the directory mixes files of two saves.
    """
    for name, entry in (config.files or {}).items():
        file = root / name
        if not file.is_file():
            continue
        size = file.stat().st_size
        found = "" if size != entry.bytes else file_digest(file)
        if size != entry.bytes or found != entry.sha256:
            what = f"{size:,} bytes, not {entry.bytes:,}" if not found else f"SHA-256 {found[:12]}..."
            raise ModelDirError(
                f"{str(file)!r} is not the file {str(root / 'config.json')!r} was saved with ({what}; recorded "
                f"SHA-256 {entry.sha256[:12]}...): the directory mixes two saves, as a `dogclf train` stopped "
                "while writing its model leaves it. Retrain the model, or restore both files from the same save."
            )


def _fail(path: Path, key: str, problem: str) -> ModelDirError:
    return ModelDirError(f"{str(path)!r}: {key} {problem}. Fix the key, or retrain the model (`dogclf train`).")
