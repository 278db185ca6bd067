"""The on-disk feature cache: one backbone feature vector per image content, reused across runs and machines.

Layout: ``ROOT/<backbone>-<hash of the backbone key>/`` holds ``namespace.json`` (what the key is made of, for
people) and ``shard-*.safetensors`` files. Each shard holds a ``features`` matrix ``(n, F)`` (float32) and, in its
safetensors header, the ``n`` image keys ``(sha256, size)`` of its rows (see :mod:`dogclf.features.keys`) and a
sha256 of the matrix. The shards' own headers are the index: there is no separate index file that could disagree
with them. Nothing in a namespace depends on paths, mtimes or the machine, so a cache folder can be copied (to S3
and into a SageMaker channel, say) and hits there for the same photos under any folder. ``ROOT/file-index.json`` is
a local accelerator (:class:`~dogclf.features.keys.StatIndex`) that spares rehashing unchanged files.

A shard is written to a unique temporary name in the same folder (created with the user's umask), fsync'd, and
renamed into place with ``os.replace``, so a shard is either complete or absent: an interrupted run leaves at most a
``.tmp-*`` file, which is never read (and is removed once it is a day old), and two runs sharing a cache never write
the same file. A shard whose bytes fail verification (checksum, truncation, a damaged header) is reported, removed,
and its images are extracted again; a shard that cannot be read at all (permission denied, an I/O error) is reported
and skipped, never removed. A cache folder that cannot be written (read-only, full, not a folder) is reported once;
the run goes on without storing features.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dogclf.features.keys import ImageKey, StatIndex, image_key
from dogclf.features.shards import DamagedShardError, read_features, read_keys, shard_bytes

if TYPE_CHECKING:
    import torch

    from dogclf.backbones.spec import Preprocessing

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "FeatureCache",
    "ImageKey",
    "default_cache_dir",
    "image_key",
    "make_backbone_key",
    "stat_index",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bumped whenever dogclf changes how features are computed or stored; old namespaces then fall out of use.

1: images keyed by resolved path, size and mtime. 2: images keyed by the sha256 and size of their bytes.
"""

INDEX_NAME = "file-index.json"

_SHARD_NAME = re.compile(r"shard-[0-9a-f]+-\d+-[0-9a-f]+\.safetensors")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """The default feature-cache folder.

    ``$DOGCLF_FEATURE_CACHE`` if set, else ``$XDG_CACHE_HOME/dogclf/features``, else ``~/.cache/dogclf/features``.
    """
    from dogclf._cachedir import user_cache_dir

    return user_cache_dir(environ, "DOGCLF_FEATURE_CACHE", "features")


def make_backbone_key(
    *, backbone: str, digest: str, preprocessing: Preprocessing, precision: str, engine: str = "torch"
) -> str:
    """The namespace key: everything besides the image file that changes a feature vector.

    float32 features of the torch and OpenVINO engines agree (cosine >= 0.9999 on real photos), so they share a
    namespace; reduced-precision features differ between engines (bfloat16: cosine ~0.996-0.999), so those are kept
    per engine.

    Args:
        backbone: The backbone's registry name.
        digest: :func:`backbone_digest` of the loaded backbone.
        preprocessing: The backbone's input contract (resize, crop, mean, std, interpolation).
        precision: The precision features are computed in (``"fp32"``, ``"bf16"``, ``"fp16"``); not ``"auto"``.
        engine: The runtime that computed them (``"torch"`` or ``"openvino"``).

    Returns:
        A canonical JSON string (also written to the namespace's ``namespace.json``).
    """
    if precision == "auto":
        raise ValueError("make_backbone_key needs the precision actually used (fp32, bf16 or fp16), not 'auto'.")
    return json.dumps(
        {
            "format": FORMAT_VERSION,
            "backbone": backbone,
            "weights_sha256": digest,
            "preprocessing": preprocessing.to_dict(),
            "precision": precision if precision == "fp32" or engine == "torch" else f"{precision} {engine}",
        },
        sort_keys=True,
    )


def stat_index(root: str | os.PathLike[str]) -> StatIndex:
    """The cache folder's :class:`~dogclf.features.keys.StatIndex` (``ROOT/file-index.json``)."""
    return StatIndex(Path(root).expanduser() / INDEX_NAME)


def _parsed(key: str) -> Any:
    try:
        return json.loads(key)
    except ValueError:
        return key


class _Entry(NamedTuple):
    shard: Path
    row: int


class FeatureCache:
    """Per-image feature vectors under one backbone namespace of a cache folder.

    Use :meth:`get_many` to look images up, :meth:`add` to store newly extracted features, and :meth:`flush` (or
    ``with``) to write the rest. Faults never raise: they are logged as warnings (logger ``dogclf.features.cache``)
    and the cache degrades to recomputing.

    Queued features are written as a shard once ``chunk_size`` images wait, or once the oldest has waited
    ``flush_seconds``, so a run that is killed (SIGKILL, a lost spot instance) loses at most that many seconds of
    extraction however slow it is. A shard write that is slow itself (a network disk) stretches the wait, so that
    writing never takes more than ``max_write_share`` of the time: the wait is at least the last write's duration
    divided by that share.

    Args:
        root: The cache folder (holds one subfolder per backbone namespace).
        backbone_key: :func:`make_backbone_key` of the backbone in use.
        label: A readable prefix for the namespace folder (the backbone name).
        describe: Extra facts for people, written to ``namespace.json`` beside the key (e.g. the weights label).
        chunk_size: Images per shard.
        flush_seconds: Also write a shard when the oldest unwritten feature is this old.
        max_write_share: The most of the run's time that time-triggered writes may take (0.02: 2 %).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        backbone_key: str,
        label: str = "",
        describe: Mapping[str, str] | None = None,
        chunk_size: int = 512,
        flush_seconds: float = 5.0,
        max_write_share: float = 0.02,
    ) -> None:
        self.root = Path(root).expanduser()
        self.backbone_key = backbone_key
        key_hash = hashlib.sha256(backbone_key.encode()).hexdigest()[:20]
        prefix = _SAFE_NAME.sub("_", label).strip("_.")[:60]
        self.path = self.root / (f"{prefix}-{key_hash}" if prefix else key_hash)
        self.describe = dict(describe or {})
        self.chunk_size = max(1, int(chunk_size))
        self.flush_seconds = float(flush_seconds)
        self.max_write_share = float(max_write_share)
        self.write_seconds = 0.0  # how long the last shard took to write (fsyncs included)
        self.writable = True
        self.hits = 0
        self.writes = 0
        self._pending_keys: list[ImageKey] = []
        self._pending: list[torch.Tensor] = []
        self._pending_since: float | None = None
        self._index: dict[ImageKey, _Entry] | None = None
        self._prepare_folder()

    # --- folder and index ----------------------------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        try:
            created = not self.path.is_dir()
            self.path.mkdir(parents=True, exist_ok=True)
            description = self.path / "namespace.json"
            if not description.is_file():
                text = json.dumps({"key": _parsed(self.backbone_key), **self.describe}, indent=2, sort_keys=True)
                self._atomic_write_bytes(description, (text + "\n").encode())
        except OSError as exc:
            self._disable_writes(exc)
            return
        if created:
            self._report_old_formats()
        self._remove_stale_temps()

    def _report_old_formats(self) -> None:
        """Says once, when a namespace is first made, which older-format namespaces beside it are now unused."""
        old: list[Path] = []
        for folder in _subfolders(self.root):
            try:
                key = json.loads((folder / "namespace.json").read_text(encoding="utf-8")).get("key", {})
                if isinstance(key, dict) and isinstance(key.get("format"), int) and key["format"] < FORMAT_VERSION:
                    old.append(folder)
            except (OSError, ValueError, AttributeError):
                continue  # not a namespace, or not readable: not ours to judge
        if old:
            size = sum(_folder_bytes(folder) for folder in old)
            logger.info(
                f"note: feature cache {self.root} holds {len(old)} folder(s) of an older cache format that this "
                f"dogclf no longer reads ({size / 1e6:.1f} MB: {', '.join(f.name for f in old[:3])}"
                f"{', ...' if len(old) > 3 else ''}); features are extracted again into the new format. Delete them "
                "to free the space, unless an older dogclf still uses this cache."
            )

    def _remove_stale_temps(self) -> None:
        now = time.time()
        try:
            for tmp in self.path.glob(f"{_TMP_PREFIX}*"):
                try:
                    if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                        tmp.unlink()
                except OSError:
                    pass  # another run removed it, or it is not ours to remove: harmless either way
        except OSError:
            pass

    def _disable_writes(self, exc: OSError) -> None:
        if not self.writable:
            return
        self.writable = False
        logger.warning(
            f"feature cache {self.path} cannot be written ({_reason(exc)}; {exc.strerror or exc}). "
            "Training goes on without storing features, so the next run extracts them again. Free space, fix the "
            "permissions, pass --cache-dir DIR for another folder, or --no-cache to silence this."
        )

    def _forget(self, shard: Path) -> None:
        if self._index is not None:
            self._index = {k: e for k, e in self._index.items() if e.shard != shard}

    def _corrupt(self, shard: Path, reason: str) -> None:
        logger.warning(
            f"feature cache shard {shard} is damaged ({reason}); removing it and extracting its images again."
        )
        with contextlib.suppress(OSError):  # read-only cache or already gone: it is skipped from now on either way
            shard.unlink()
        self._forget(shard)

    def _unreadable(self, shard: Path, exc: OSError) -> None:
        logger.warning(
            f"feature cache shard {shard} cannot be read ({_reason(exc)}); skipping it (not removed) and "
            "extracting its images again. Fix its permissions, or remove it if it is not needed."
        )
        self._forget(shard)

    def _load_index(self) -> dict[ImageKey, _Entry]:
        if self._index is not None:
            return self._index
        index: dict[ImageKey, _Entry] = {}
        self._index = index
        try:
            with os.scandir(self.path) as entries:
                shards = sorted(Path(e.path) for e in entries if _SHARD_NAME.fullmatch(e.name))
        except FileNotFoundError:
            shards = []
        except OSError as exc:
            logger.warning(f"feature cache {self.path} cannot be listed ({_reason(exc)}); extracting every image.")
            shards = []
        for shard in shards:
            try:
                keys = read_keys(shard, format_version=FORMAT_VERSION)
            except FileNotFoundError:
                continue  # removed by a concurrent run since the listing
            except OSError as exc:
                self._unreadable(shard, exc)
                continue
            except DamagedShardError as exc:
                self._corrupt(shard, str(exc))
                continue
            for row, key in enumerate(keys):
                index[key] = _Entry(shard, row)
        return index

    def __len__(self) -> int:
        """Number of images with a stored feature vector in this namespace."""
        return len(self._load_index())

    # --- reading -------------------------------------------------------------------------------------------------

    def get_many(self, keys: Sequence[ImageKey | None]) -> tuple[list[int], torch.Tensor | None]:
        """Looks images up.

        Args:
            keys: One key per image (``None`` for an image that cannot be looked up).

        Returns:
            ``(positions, features)``: the positions in ``keys`` that were found, and their features
            ``(len(positions), F)`` float32 in that order (``None`` if nothing was found).
        """
        import torch

        index = self._load_index()
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            entry = index.get(key) if key is not None else None
            if entry is not None:
                by_shard.setdefault(entry.shard, []).append((position, entry.row))
        positions: list[int] = []
        parts: list[torch.Tensor] = []
        for shard, wanted in by_shard.items():
            matrix = self._read_shard(shard)
            if matrix is None:
                continue
            positions += [p for p, _ in wanted]
            parts.append(matrix[torch.tensor([r for _, r in wanted], dtype=torch.long)])
        if not parts:
            return [], None
        order = sorted(range(len(positions)), key=positions.__getitem__)
        features = torch.cat(parts)[torch.tensor(order, dtype=torch.long)]
        self.hits += len(positions)
        return sorted(positions), features

    def _read_shard(self, shard: Path) -> torch.Tensor | None:
        try:
            _, matrix = read_features(shard, format_version=FORMAT_VERSION)
        except FileNotFoundError:
            logger.warning(f"feature cache shard {shard} vanished while in use; extracting its images again.")
            self._forget(shard)
            return None
        except OSError as exc:
            self._unreadable(shard, exc)
            return None
        except DamagedShardError as exc:
            self._corrupt(shard, str(exc))
            return None
        return matrix

    # --- writing -------------------------------------------------------------------------------------------------

    def add(self, keys: Sequence[ImageKey | None], features: torch.Tensor) -> None:
        """Queues newly extracted features; writes a shard once ``chunk_size`` images wait or :attr:`flush_due`.

        Args:
            keys: The images' keys; rows whose key is ``None`` are not stored.
            features: ``(len(keys), F)`` features.
        """
        if len(keys) != len(features):
            raise ValueError(f"add() got {len(keys)} keys for {len(features)} feature rows")
        if not self.writable:
            return
        import torch

        keep = [i for i, key in enumerate(keys) if key is not None]
        if not keep:
            return
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._pending_keys += [key for key in keys if key is not None]
        rows = features.detach().to("cpu", torch.float32)
        self._pending.append(rows if len(keep) == len(keys) else rows[keep])
        if len(self._pending_keys) >= self.chunk_size or self.flush_due:
            self.flush()

    @property
    def flush_seconds_now(self) -> float:
        """How long queued features wait before a write: ``flush_seconds``, stretched by a slow last write."""
        return max(self.flush_seconds, self.write_seconds / self.max_write_share if self.max_write_share > 0 else 0)

    @property
    def flush_due(self) -> bool:
        """Whether the oldest queued feature has waited :attr:`flush_seconds_now`."""
        if self._pending_since is None:
            return False
        return time.monotonic() - self._pending_since >= self.flush_seconds_now

    def flush(self) -> None:
        """Writes every queued feature as shards of at most ``chunk_size`` rows."""
        import torch

        if not self._pending_keys:
            return
        keys, self._pending_keys = self._pending_keys, []
        matrix = torch.cat(self._pending)
        self._pending, self._pending_since = [], None
        for start in range(0, len(keys), self.chunk_size):
            if not self.writable:
                return
            self._write_shard(keys[start : start + self.chunk_size], matrix[start : start + self.chunk_size])

    def _write_shard(self, keys: Sequence[ImageKey], matrix: torch.Tensor) -> None:
        target = self.path / f"shard-{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        started = time.monotonic()
        try:
            self._atomic_write_bytes(target, shard_bytes(keys, matrix, format_version=FORMAT_VERSION))
        except OSError as exc:
            self._disable_writes(exc)
            return
        finally:
            self.write_seconds = time.monotonic() - started
        self.writes += len(keys)
        if self._index is not None:
            for row, key in enumerate(keys):
                self._index[key] = _Entry(target, row)

    def _atomic_write_bytes(self, target: Path, data: bytes) -> None:
        """Writes ``data`` to a new temporary file (mode 0666 less the umask), fsyncs it, renames it to ``target``."""
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError:
            _remove_quietly(tmp)
            raise
        _fsync_dir(self.path)

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.flush()


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EIO: "an input/output error",
}


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno or -1, f"{type(exc).__name__}: {exc}")


def _subfolders(root: Path) -> list[Path]:
    try:
        with os.scandir(root) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _folder_bytes(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform can open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
