"""dogclf's eval transform computes what torchvision's Resize/CenterCrop/ToTensor/Normalize compute, bit for bit."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGEWOOF, REPO, needs_imagewoof
from PIL import Image

from dogclf._compat import import_torchvision
from dogclf.backbones.spec import Preprocessing
from dogclf.data.images import load_rgb
from dogclf.data.transforms import eval_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision(pre: Preprocessing) -> object:
    t = import_torchvision().transforms
    modes = t.InterpolationMode
    mode = {"nearest": modes.NEAREST, "bilinear": modes.BILINEAR, "bicubic": modes.BICUBIC}[pre.interpolation]
    return t.Compose(
        [
            t.Resize(pre.resize_size, interpolation=mode, antialias=True),
            t.CenterCrop(pre.input_size),
            t.ToTensor(),
            t.Normalize(pre.mean, pre.std),
        ]
    )


def _random_image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(("input_size", "resize_size"), [(224, 256), (224, 224), (32, 36), (299, 342)])
def test_eval_transform_equals_torchvision_on_any_image_size(
    interpolation: str, input_size: int, resize_size: int
) -> None:
    pre = Preprocessing(input_size=input_size, resize_size=resize_size, mean=MEAN, std=STD, interpolation=interpolation)
    ours, theirs = eval_transform(pre), _torchvision(pre)
    rng = random.Random(f"{interpolation}{input_size}")
    sizes = [(500, 375), (375, 500), (resize_size, resize_size), (resize_size + 1, resize_size), (31, 400), (17, 9)]
    sizes += [(rng.randrange(8, 700), rng.randrange(8, 700)) for _ in range(6)]
    for size in sizes:
        image = _random_image(rng, size)
        expected = theirs(image)  # type: ignore[operator]
        got = ours(image)
        assert got.dtype == expected.dtype == torch.float32
        assert got.shape == expected.shape, size
        assert torch.equal(got, expected), (size, (got - expected).abs().max())


def test_a_crop_larger_than_the_resized_image_is_padded_with_zeros_as_torchvision_pads() -> None:
    pre = Preprocessing(input_size=40, resize_size=30, mean=(0.0,) * 3, std=(1.0,) * 3)
    for size in [(30, 30), (45, 30), (30, 61)]:
        image = _random_image(random.Random(size[0] * size[1]), size)
        assert torch.equal(eval_transform(pre)(image), _torchvision(pre)(image))  # type: ignore[operator]


@pytest.mark.realdata
@needs_imagewoof()
def test_eval_transform_equals_torchvision_on_real_photos() -> None:
    pre = Preprocessing(input_size=224, resize_size=256, mean=MEAN, std=STD)
    ours, theirs = eval_transform(pre), _torchvision(pre)
    photos = sorted((IMAGEWOOF / "train").rglob("*.JPEG"))[::400]
    assert len(photos) >= 20
    for path in photos:
        image = load_rgb(path, min_size=pre.resize_size)
        assert torch.equal(ours(image), theirs(image)), path  # type: ignore[operator]


def test_extraction_and_prediction_modules_do_not_import_torchvision(tmp_path: Path) -> None:
    # torchvision costs about a second to import (it pulls in torch._dynamo): the frozen-feature path must not need it.
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from dogclf.backbones.spec import Preprocessing\n"
        "from dogclf.data.transforms import eval_transform\n"
        "import dogclf.features.extract, dogclf.features.pipeline, dogclf.pipeline.run\n"
        "eval_transform(Preprocessing(input_size=8, resize_size=9, mean=(0.5,) * 3, std=(0.5,) * 3))"
        "(Image.new('RGB', (12, 10)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
