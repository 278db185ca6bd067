"""A small synthetic labelled image tree for the demo and for tests.

The images are drawn patterns, not dog photos: each "breed" is a colour and a
shape, with random positions, sizes and noise.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_dataset"]

SYNTHETIC_CLASSES = (
    ("Synthetic_red_discs", (210, 50, 40), "disc"),
    ("Synthetic_blue_stripes", (40, 80, 210), "stripes"),
    ("Synthetic_green_squares", (40, 170, 60), "square"),
    ("Synthetic_yellow_triangles", (230, 200, 40), "triangle"),
    ("Synthetic_purple_rings", (140, 60, 170), "ring"),
    ("Synthetic_cyan_crosses", (40, 190, 200), "cross"),
)


def _draw(rng: random.Random, colour: tuple[int, int, int], shape: str, size: int) -> Image.Image:
    bg = tuple(rng.randint(90, 200) for _ in range(3))
    image = Image.new("RGB", (size, size), bg)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(size // 8, size // 3)
        x, y = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (x - r, y - r, x + r, y + r)
        if shape == "disc":
            draw.ellipse(box, fill=jitter)
        elif shape == "ring":
            draw.ellipse(box, outline=jitter, width=max(2, r // 4))
        elif shape == "square":
            draw.rectangle(box, fill=jitter)
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=jitter)
        elif shape == "cross":
            w = max(2, r // 3)
            draw.rectangle((x - r, y - w, x + r, y + w), fill=jitter)
            draw.rectangle((x - w, y - r, x + w, y + r), fill=jitter)
    if shape == "stripes":
        step = rng.randint(size // 10, size // 5)
        for x in range(rng.randint(0, step), size, 2 * step):
            draw.rectangle((x, 0, x + step // 2, size), fill=jitter)
    noise = Image.effect_noise((size, size), rng.randint(10, 30)).convert("RGB")
    return Image.blend(image, noise, 0.15).filter(ImageFilter.GaussianBlur(rng.random()))


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 4,
    per_split: tuple[int, int, int] = (16, 6, 6),
    size: int = 96,
    seed: int = 0,
) -> Path:
    """Writes a dogImages-layout tree of synthetic JPEGs.

    ``root/train/001.Synthetic_red_discs/Synthetic_red_discs_00001.jpg`` and so on
    for ``valid/`` and ``test/``, plus a ``README.txt`` saying what it is.

    Args:
        root: Folder to write into (created).
        num_classes: Number of classes, at most ``len(SYNTHETIC_CLASSES)``.
        per_split: Images per class in train, valid and test.
        size: Side of each square image.
        seed: Random seed; the same seed writes the same images.

    Returns:
        ``root`` as a Path.
    """
    if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be between 2 and {len(SYNTHETIC_CLASSES)}, got {num_classes}")
    root = Path(root)
    rng = random.Random(seed)
    counter = 0
    for split, count in zip(("train", "valid", "test"), per_split, strict=True):
        if count == 0:
            continue  # no such split: an empty class folder would make the tree unreadable
        for number, (name, colour, shape) in enumerate(SYNTHETIC_CLASSES[:num_classes], 1):
            folder = root / split / f"{number:03d}.{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                counter += 1
                _draw(rng, colour, shape, size).save(folder / f"{name}_{counter:05d}.jpg", quality=90)
    (root / "README.txt").write_text(
        "SYNTHETIC data written by dogclf: drawn coloured shapes, not dog photos.\n"
        "Layout: train|valid|test/NNN.Class_name/*.jpg (the Udacity dogImages layout).\n",
        encoding="utf-8",
    )
    return root
