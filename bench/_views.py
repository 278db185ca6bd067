"""Transformed copies of photos, and their cached features: the "user photo" shift and augmented views.

Two seeded, per-photo transforms of a photo file, written as a new JPEG:

* ``shift``: how a user's photo differs from a curated ImageNet photo: a crop of 30-90% of the area off centre, the
  resolution cut to a shorter side of 64-160 px, and JPEG re-compression at quality 15-60. This is the test shift.
* ``augment``: a training-style augmented view (random resized crop of 25-100% of the area, horizontal flip, colour
  jitter of brightness/contrast/saturation by up to 40%), saved at JPEG quality 95. A calibration may be fitted on
  these; it never sees a ``shift`` view.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KINDS = ("shift", "augment")


def transformed(path: Path, kind: str, seed: int) -> Any:
    """The ``kind`` view of the photo at ``path`` (a PIL image) and the JPEG quality to save it at.

    ``shift`` is :func:`dogclf.data.degrade.degraded_view`, what ``dogclf train --degraded-views`` trains on (with other
    seeds); ``augment`` is drawn here.
    """
    from PIL import Image, ImageEnhance, ImageOps

    from dogclf.data.degrade import _crop, degraded_view

    if kind == "shift":
        return degraded_view(path, seed=seed)
    rng = random.Random(f"{kind}:{seed}:{path.name}")
    image = _crop(Image.open(path).convert("RGB"), rng, 0.25, 1.0)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.6, 1.4))
    return image, 95


def write_views(paths: Sequence[Path], out: Path, kind: str, seed: int = 0) -> list[Path]:
    """Writes the ``kind`` view of each photo under ``out/<class folder>/`` (skips existing files); their paths."""
    written = []
    for path in paths:
        target = out / kind / path.parent.name / (path.stem + ".jpg")
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            image, quality = transformed(path, kind, seed)
            image.save(target, quality=quality)
        written.append(target)
    return written


def view_features(paths: Sequence[Path], labels: Sequence[int], cache_dir: Path | None) -> Any:
    """``(N, 1280)`` float32 features of image files (the ``efficientnet_lite0`` ImageNet backbone), via the cache."""
    from _features import lite0_features

    from dogclf.data.folder import DataSplits, Sample

    samples = [Sample(Path(p), int(y)) for p, y in zip(paths, labels, strict=True)]
    splits = DataSplits(root=Path(paths[0]).parent.parent, classes=[], train=samples, valid=[], test=[])
    return lite0_features(splits, cache_dir, "cpu", progress=False)["train"].features
