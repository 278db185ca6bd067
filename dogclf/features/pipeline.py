"""From data splits to in-memory feature matrices: cache look-up, extraction of the rest, storing them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dogclf.features.cache import FeatureCache, ImageKey, backbone_digest, image_key, make_backbone_key

if TYPE_CHECKING:
    from dogclf.backbones.spec import BackboneSpec
    from dogclf.data.folder import DataSplits, Sample
    from dogclf.features.extract import ExtractOptions

__all__ = ["FeatureSet", "effective_precision", "prepare_features"]


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


def prepare_features(
    splits: DataSplits,
    spec: BackboneSpec,
    backbone: torch.nn.Module,
    *,
    weights_label: str,
    cache_dir: Path | None,
    options: ExtractOptions,
    log: Callable[[str], None],
    progress: bool | None = None,
) -> dict[str, FeatureSet]:
    """Features of every image of ``splits``: from the cache where present, extracted (and cached) otherwise.

    Each distinct image file is looked up once, by its resolved path, size and modification time, in the cache
    namespace of this backbone's exact weights, preprocessing and precision. Missing ones go through the backbone
    batch by batch and are written to the cache every few hundred images, so an interrupted run keeps what it
    finished: the next run extracts only the rest. The global torch RNG is left as it was, so training after this
    call draws the same random numbers whether or not anything was extracted.

    Args:
        splits: The data.
        spec: The backbone's spec (name and preprocessing).
        backbone: The loaded backbone module (its weights are digested for the cache key).
        weights_label: How the weights are recorded (``"imagenet"``, ``"none"``, a path); shown in the cache's
            ``namespace.json`` only: the key uses the digest of the loaded tensors.
        cache_dir: The cache folder; ``None`` extracts in memory without a cache.
        options: Extraction settings (batch size, workers, precision, device).
        log: Where the summary line and cache warnings go.
        progress: A progress bar over extraction; ``None`` shows it when stderr is a terminal.

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``; a split without images has empty tensors.
    """
    from dogclf.features.extract import iter_features

    by_split = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    paths, rows = _unique_paths(by_split)
    precision = effective_precision(options)
    cache: FeatureCache | None = None
    keys: list[ImageKey | None] = [None] * len(paths)
    if cache_dir is not None:
        key = make_backbone_key(
            backbone=spec.name,
            digest=backbone_digest(backbone),
            preprocessing=spec.preprocessing,
            precision=precision,
        )
        cache = FeatureCache(cache_dir, backbone_key=key, label=spec.name, describe={"weights": weights_label}, log=log)
        keys = [_key_or_none(p) for p in paths]

    width = spec.num_features
    features = torch.empty(len(paths), width, dtype=torch.float32)
    found: list[int] = []
    if cache is not None:
        found, cached = cache.get_many(keys)
        if cached is not None:
            features[torch.tensor(found, dtype=torch.long)] = cached
    found_set = set(found)
    missing = [i for i in range(len(paths)) if i not in found_set]

    started = time.perf_counter()
    if missing:
        bar = _progress_bar(len(missing), progress)
        try:
            # Extraction may draw from the global RNG (DataLoader start-up); training must not notice it ran.
            with torch.random.fork_rng(devices=[]):
                batches = iter_features(backbone, [paths[i] for i in missing], spec.preprocessing, options)
                for positions, batch in batches:
                    targets = [missing[p] for p in positions]
                    features[torch.tensor(targets, dtype=torch.long)] = batch
                    if cache is not None:
                        cache.add([keys[t] for t in targets], batch)
                    if bar is not None:
                        bar.update(len(positions))
        finally:
            if bar is not None:
                bar.close()
            if cache is not None:
                cache.flush()  # also on Ctrl-C: finished batches are kept for the next run
    seconds = time.perf_counter() - started
    rate = f" ({len(missing) / seconds:.0f} img/s)" if missing and seconds > 0 else ""
    where = f" (cache {cache.path})" if cache is not None else " (no cache)"
    log(f"features: {len(found)} cached, {len(missing)} extracted in {seconds:.0f} s{rate}, {precision}{where}")
    return {name: _feature_set(features, rows[name], samples) for name, samples in by_split.items()}


def _unique_paths(by_split: dict[str, Sequence[Sample]]) -> tuple[list[Path], dict[str, list[int]]]:
    position: dict[Path, int] = {}
    rows: dict[str, list[int]] = {}
    for name, samples in by_split.items():
        rows[name] = [position.setdefault(s.path, len(position)) for s in samples]
    return list(position), rows


def _feature_set(features: torch.Tensor, rows: list[int], samples: Sequence[Sample]) -> FeatureSet:
    return FeatureSet(
        features=features[torch.tensor(rows, dtype=torch.long)] if rows else features[:0].clone(),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
    )


def _key_or_none(path: Path) -> ImageKey | None:
    try:
        return image_key(path)
    except OSError:
        return None  # extraction will report the file; it is just not cached


def effective_precision(options: ExtractOptions) -> str:
    """The precision extraction will use with ``options`` (``"auto"`` resolved for the device); part of the key."""
    from dogclf.features import extract

    return str(extract.resolve_precision(options))


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A bar on a terminal (or with ``progress``), else a progress line every few seconds (:mod:`dogclf._progress`)."""
    from dogclf._progress import progress_reporter

    return progress_reporter(total, desc="extract features", unit="img", bar=progress)
