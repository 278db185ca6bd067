"""From data splits to in-memory feature matrices: cache look-up, extraction of the rest, storing them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dogclf._logging import deprecated_log
from dogclf.backbones.weights import backbone_digest
from dogclf.errors import UnreadableImageError
from dogclf.features.cache import FeatureCache, make_backbone_key, stat_index
from dogclf.features.keys import content_keys

if TYPE_CHECKING:
    from dogclf.backbones.spec import BackboneSpec
    from dogclf.data.folder import DataSplits, Sample
    from dogclf.features.extract import ExtractOptions, FeatureBatch

__all__ = ["FeatureSet", "effective_engine", "effective_precision", "prepare_features"]

logger = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """Backbone features of a split and their labels.

    Attributes:
        features: ``(N, F)`` float32 features, in the split's sample order.
        labels: ``(N,)`` int64 class indices.
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@deprecated_log
def prepare_features(
    splits: DataSplits,
    spec: BackboneSpec,
    backbone: torch.nn.Module,
    *,
    weights_label: str,
    cache_dir: Path | None,
    options: ExtractOptions,
    progress: bool | None = None,
    unreadable: list[tuple[Path, str]] | None = None,
    while_decoding: Callable[[], object] | None = None,
    log_level: int = logging.INFO,
) -> dict[str, FeatureSet]:
    """Features of every image of ``splits``: from the cache where present, extracted (and cached) otherwise.

    Each distinct image file is keyed by the sha256 of its bytes (see :mod:`dogclf.features.keys`; the cache folder's
    stat index spares rehashing unchanged files) and looked up in the cache namespace of this backbone's exact
    weights, preprocessing and precision. The missing ones go through the backbone batch by batch and are written to
    the cache every few hundred images, so an interrupted run keeps what it finished: the next run extracts only the
    rest. The global torch RNG is left as it was, so training after this call draws the same random numbers whether
    or not anything was extracted.

    Args:
        splits: The data.
        spec: The backbone's spec (name and preprocessing).
        backbone: The loaded backbone module (its weights are digested for the cache key).
        weights_label: How the weights are recorded (``"imagenet"``, ``"none"``, a path); shown in the cache's
            ``namespace.json`` only: the key uses the digest of the loaded tensors.
        cache_dir: The cache folder; ``None`` extracts in memory without a cache.
        options: Extraction settings (batch size, workers, precision, device).
        progress: A progress bar over extraction; ``None`` shows it when stderr is a terminal.
        unreadable: A list that receives ``(path, reason)`` of every image that cannot be decoded; those are left
            out of the returned feature sets (the caller drops them from ``splits``, e.g. with
            :func:`dogclf.data.folder.drop_unreadable`). Without it the first one raises. Images found in the cache
            decoded when they were extracted, so they are not decoded again.
        while_decoding: Work for the main process that overlaps the decoding of the first batches (see
            :func:`~dogclf.features.extract.iter_feature_batches`); it runs once if anything is extracted.
        log_level: The level of the ``features: N cached, M extracted ...`` line (logger
            ``dogclf.features.pipeline``). Cache warnings go to the ``dogclf.features.cache`` logger.

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``; a split without images has empty tensors.

    Raises:
        UnreadableImageError: An image that cannot be decoded, when ``unreadable`` is not given.
    """
    from dogclf.features.extract import iter_feature_batches

    by_split = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    paths, rows = _unique_paths(by_split)
    precision = effective_precision(options)
    engine = effective_engine(options)
    cache = None
    if cache_dir is not None:
        cache = _open_cache(cache_dir, spec, backbone, (precision, engine), weights_label)
    features = torch.empty(len(paths), spec.num_features, dtype=torch.float32)
    found = _read_cached(cache, paths, features) if cache is not None else set()
    missing = [i for i in range(len(paths)) if i not in found]
    started = time.perf_counter()
    with _progress_bar(len(missing), progress) as bar, torch.random.fork_rng(devices=[]):
        # Extraction may draw from the global RNG (DataLoader start-up); training must not notice it ran.
        todo = [paths[i] for i in missing]
        with contextlib.closing(
            iter_feature_batches(backbone, todo, spec.preprocessing, options, while_decoding=while_decoding)
        ) as batches:
            bad = _store_batches(batches, missing, paths, features, cache, bar, raising=unreadable is None)
    seconds = time.perf_counter() - started
    rate = f" ({len(missing) / seconds:.0f} img/s)" if missing and seconds > 0 else ""
    where = f" (cache {cache.path})" if cache is not None else " (no cache)"
    how = f"{precision} {engine}" if missing else precision
    logger.log(
        log_level,
        f"features: {len(found)} cached, {len(missing)} extracted in {seconds:.0f} s{rate}, {how}{where}",
    )
    if unreadable is not None:
        unreadable += [(paths[i], reason) for i, reason in bad]
    dropped = {i for i, _ in bad}
    return {name: _feature_set(features, rows[name], samples, dropped) for name, samples in by_split.items()}


def _open_cache(
    cache_dir: Path,
    spec: BackboneSpec,
    backbone: torch.nn.Module,
    numerics: tuple[str, str],
    weights_label: str,
) -> FeatureCache:
    """The cache namespace of this backbone's exact weights, preprocessing and numerics (precision, engine)."""
    precision, engine = numerics
    key = make_backbone_key(
        backbone=spec.name,
        digest=backbone_digest(backbone),
        preprocessing=spec.preprocessing,
        precision=precision,
        engine=engine,
    )
    return FeatureCache(cache_dir, backbone_key=key, label=spec.name, describe={"weights": weights_label})


def _read_cached(cache: FeatureCache, paths: Sequence[Path], features: torch.Tensor) -> set[int]:
    """Fills the rows of ``features`` the cache holds; returns their positions."""
    if not len(cache):
        return set()  # an empty namespace: nothing to look up, so nothing to hash before extracting
    index = stat_index(cache.root)
    keys = content_keys(paths, index)
    if cache.writable:
        index.save()
    found, cached = cache.get_many(keys)
    if cached is not None:
        features[torch.tensor(found, dtype=torch.long)] = cached
    return set(found)


def _store_batches(
    batches: Iterator[FeatureBatch],
    missing: Sequence[int],
    paths: Sequence[Path],
    features: torch.Tensor,
    cache: FeatureCache | None,
    bar: Any,
    *,
    raising: bool,
) -> list[tuple[int, str]]:
    """Puts extracted batches of the ``missing`` rows into ``features`` and the cache; returns the unreadable rows."""
    bad: list[tuple[int, str]] = []
    try:
        for batch in batches:
            bad += [(missing[p], reason) for p, reason in batch.unreadable]
            if bad and raising:
                position, reason = bad[0]
                raise UnreadableImageError(
                    f"{paths[position]}: {reason}; remove the file or filter unreadable images first "
                    "(dogclf.data.images.find_unreadable)"
                )
            targets = [missing[p] for p in batch.positions]
            if targets:
                features[torch.tensor(targets, dtype=torch.long)] = batch.features
                if cache is not None:
                    cache.add(batch.keys, batch.features)
            if bar is not None:
                bar.update(len(batch.positions) + len(batch.unreadable))
    finally:
        if cache is not None:
            cache.flush()  # also on Ctrl-C: finished batches are kept for the next run
    return bad


def _unique_paths(by_split: dict[str, Sequence[Sample]]) -> tuple[list[Path], dict[str, list[int]]]:
    position: dict[Path, int] = {}
    rows: dict[str, list[int]] = {}
    for name, samples in by_split.items():
        rows[name] = [position.setdefault(s.path, len(position)) for s in samples]
    return list(position), rows


def _feature_set(features: torch.Tensor, rows: list[int], samples: Sequence[Sample], dropped: set[int]) -> FeatureSet:
    kept = [(row, s.label) for row, s in zip(rows, samples, strict=True) if row not in dropped]
    return FeatureSet(
        features=features[torch.tensor([r for r, _ in kept], dtype=torch.long)] if kept else features[:0].clone(),
        labels=torch.tensor([label for _, label in kept], dtype=torch.long),
    )


def effective_engine(options: ExtractOptions) -> str:
    """The runtime extraction will use with ``options`` (``"openvino"`` or ``"torch"``), for the summary line."""
    from dogclf.features import extract

    return extract.resolve_engine(options)


def effective_precision(options: ExtractOptions) -> str:
    """The precision extraction will use with ``options`` (``"auto"`` resolved for the device); part of the key."""
    from dogclf.features import extract

    return str(extract.resolve_precision(options))


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A bar on a terminal (or with ``progress``), else a progress line every few seconds (:mod:`dogclf._progress`).

    Nothing at all when there is nothing to extract. It is a context manager.
    """
    from dogclf._progress import progress_reporter

    return progress_reporter(total, desc="extract features", unit="img", bar=progress, enabled=total > 0)
