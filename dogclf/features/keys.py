"""What the feature cache keys an image by: the sha256 and size of the file's bytes, found without rereading.

An image is identified by what it holds, not where it is: the same photo under another folder, on another machine
or with a new modification time (copied, synced, downloaded into a SageMaker channel) has the same key, and a file
whose bytes changed gets a new key whatever its path, size and modification time say.

Hashing reads every file (about 1 s for the 8,700 small JPEGs of imagewoof with a few threads; photos straight from a
camera take longer). A :class:`StatIndex` spares most of that on later runs: it remembers, per path, the file's
device, inode, size, mtime and ctime when it was hashed, and gives the stored hash back only while all five are
unchanged. Programs can set a file's mtime but not its ctime: the kernel sets ctime to the current time on every
write, rename and mtime change, so a file rewritten with its old mtime kept (``rsync -a``, ``tar x``, ``cp -p``)
never matches its old entry. Two rules close the remaining gaps: an entry is recorded only for a file whose ctime is
at least :data:`RACY_SECONDS` old when it is hashed (a change within the same timestamp tick would keep every field
equal), and only if the file did not change while it was being read. Where ctime is not a change time (Windows) no
entries are recorded, and every run hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

__all__ = ["RACY_SECONDS", "ImageKey", "StatIndex", "content_keys", "image_key", "read_keyed"]

RACY_SECONDS = 3.0
"""A file changed less than this long before it was hashed gets no index entry (coarse timestamps, clock skew)."""

_INDEX_FORMAT = 1
_MAX_ENTRIES = 1_000_000


class ImageKey(NamedTuple):
    """What identifies an image file's content: the sha256 (hex) of its bytes, and their number."""

    sha256: str
    size: int


class _Stamp(NamedTuple):
    """What :class:`StatIndex` compares: a file's device, inode, size, mtime and ctime (nanoseconds)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _stamp(info: os.stat_result) -> _Stamp:
    return _Stamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_keyed(path: str | os.PathLike[str]) -> tuple[bytes, ImageKey, _Stamp | None]:
    """Reads a file once and returns its bytes, their key, and its stat stamp (``None`` if it changed meanwhile).

    Raises:
        OSError: If the file cannot be read.
    """
    with open(path, "rb") as file:
        before = _stamp(os.fstat(file.fileno()))
        data = file.read()
        after = _stamp(os.fstat(file.fileno()))
    stamp = before if before == after and after.size == len(data) else None
    return data, ImageKey(hashlib.sha256(data).hexdigest(), len(data)), stamp


def image_key(path: str | os.PathLike[str]) -> ImageKey:
    """The key of the file at ``path`` (reads and hashes it).

    Raises:
        OSError: If the file cannot be read.
    """
    return read_keyed(path)[1]


class StatIndex:
    """A per-path memory of file stamps and their content keys, kept in one JSON file; an accelerator only.

    Losing it, or a second run overwriting it, only costs hashing again. It holds local paths and inodes, so it is
    meaningless (and never matches) on another machine.

    Args:
        path: The index file (``file-index.json`` in the cache folder).
        racy_seconds: See :data:`RACY_SECONDS`.
    """

    def __init__(self, path: str | os.PathLike[str], *, racy_seconds: float = RACY_SECONDS) -> None:
        self.path = Path(path)
        self.racy_ns = int(racy_seconds * 1e9)
        self.enabled = os.name != "nt"  # there st_ctime is the creation time: it does not change on writes
        self.hits = 0
        self.hashed = 0
        self._entries: dict[str, list[int | str]] = self._read() if self.enabled else {}
        self._changed = False

    def _read(self) -> dict[str, list[int | str]]:
        try:
            with open(self.path, "rb") as file:
                payload = json.loads(file.read())
            if payload.get("format") == _INDEX_FORMAT and isinstance(payload.get("entries"), dict):
                return payload["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # missing, unreadable or damaged: an accelerator only, so start empty
        return {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: str) -> ImageKey | None:
        """The stored key of ``path`` if the file's stamp is unchanged since it was recorded, else ``None``."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        try:
            stamp = _stamp(os.stat(path))
        except OSError:
            return None
        if list(stamp) != entry[:5]:
            return None
        self.hits += 1
        return ImageKey(str(entry[5]), stamp.size)

    def record(self, path: str, stamp: _Stamp | None, key: ImageKey) -> None:
        """Remembers ``key`` for ``path`` if ``stamp`` is safe to trust later (see the module docstring)."""
        if not self.enabled or stamp is None or stamp.size != key.size:
            return
        if time.time_ns() - stamp.ctime_ns < self.racy_ns:
            return  # changed just now: another change within the same timestamp tick would be invisible
        self._entries[path] = [*stamp, key.sha256, int(time.time())]
        self._changed = True

    def save(self) -> None:
        """Writes the index if it changed, atomically; a failure is silent (it only costs hashing again)."""
        if not self._changed:
            return
        if len(self._entries) > _MAX_ENTRIES:  # forget the oldest records
            newest = sorted(self._entries.items(), key=lambda item: item[1][6])[-_MAX_ENTRIES:]
            self._entries = dict(newest)
        tmp = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "w", encoding="utf-8") as file:
                json.dump({"format": _INDEX_FORMAT, "entries": self._entries}, file, separators=(",", ":"))
            os.replace(tmp, self.path)
            self._changed = False
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def content_keys(
    paths: Sequence[str | os.PathLike[str]], index: StatIndex | None = None, *, workers: int | None = None
) -> list[ImageKey | None]:
    """The content key of every file: from ``index`` where its stamp is unchanged, else by hashing it (in threads).

    Args:
        paths: Files.
        index: A :class:`StatIndex` to consult and update (``None``: hash every file).
        workers: Hashing threads (hashlib and file reads release the GIL); ``None``: twice the CPUs, at most 8.

    Returns:
        One key per path, ``None`` for a file that cannot be read.
    """
    names = [os.path.abspath(p) for p in paths]
    keys: list[ImageKey | None] = [index.lookup(n) if index is not None else None for n in names]
    todo = [i for i, key in enumerate(keys) if key is None]

    def hash_one(position: int) -> ImageKey | None:
        try:
            _, key, stamp = read_keyed(names[position])
        except OSError:
            return None  # extraction reports the file; it is just not looked up
        if index is not None:
            index.record(names[position], stamp, key)
        return key

    threads = workers if workers is not None else min(8, 2 * (os.cpu_count() or 1))
    if threads > 1 and len(todo) > 16:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = list(pool.map(hash_one, todo, chunksize=16))
    else:
        found = [hash_one(i) for i in todo]
    for position, key in zip(todo, found, strict=True):
        keys[position] = key
    if index is not None:
        index.hashed += len(todo)
    return keys
