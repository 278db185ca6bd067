"""The cached ``efficientnet_lite0`` features of every photo of ``imagewoof/train``, for the head benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import IMAGEWOOF

BACKBONE = "efficientnet_lite0"


def lite0_features(splits: Any, cache_dir: Path | None, device: str = "auto", progress: bool | None = None) -> Any:
    """``prepare_features`` of ``splits`` with the ``efficientnet_lite0`` ImageNet backbone, its summary printed."""
    from dogclf._logging import cli_logging
    from dogclf.backbones.registry import get_backbone
    from dogclf.backbones.weights import build_backbone
    from dogclf.features.extract import ExtractOptions
    from dogclf.features.pipeline import prepare_features

    spec = get_backbone(BACKBONE)
    with cli_logging():  # the features summary line, printed as `dogclf train` prints it
        return prepare_features(
            splits,
            spec,
            build_backbone(spec, "imagenet"),
            weights_label="imagenet",
            cache_dir=cache_dir,
            options=ExtractOptions(device=device),
            progress=progress,
        )


def imagewoof_features(cache_dir: Path | None, device: str = "auto") -> tuple[Any, Any, list[str]]:
    """``(features (N, 1280) float32, labels (N,), class folders)`` of all of imagewoof/train, via the cache.

    The first call extracts every photo (minutes on a CPU) into ``cache_dir``; later calls read them back in about a
    second. ``cache_dir=None`` extracts in memory.
    """
    from dogclf.data.folder import load_splits

    if not IMAGEWOOF.is_dir():
        raise SystemExit(f"No photos at {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    splits = load_splits(IMAGEWOOF, require_valid=False, check_images=False)
    features = lite0_features(splits, cache_dir, device, progress=False)["train"]
    return features.features, features.labels, [c.folder for c in splits.classes]


def imagewoof_paths() -> list[Path]:
    """The photo files of imagewoof/train, in the row order of :func:`imagewoof_features`."""
    from dogclf.data.folder import load_splits

    return [s.path for s in load_splits(IMAGEWOOF, require_valid=False, check_images=False).train]
