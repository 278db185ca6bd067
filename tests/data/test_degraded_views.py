"""`dogclf train --degraded-views N`: seeded degraded views of the training photos in the head's training set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import dogclf
from dogclf.data.degrade import DEFAULT_VIEW_SMOOTHING, degraded_view, write_degraded_views
from dogclf.data.folder import Sample
from dogclf.features.pipeline import FeatureSet
from dogclf.model import DogClassifierNet, HeadConfig, build_head
from dogclf.training.config import TrainConfig
from dogclf.training.lbfgs import fit_lbfgs_head, fit_logistic, linear_layer


def _photo(path: Path, size: tuple[int, int] = (300, 220)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise(size, 60).convert("RGB").save(path, quality=95)
    return path


def test_a_degraded_view_is_a_smaller_crop_and_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "a" / "dog.jpg")

    first = write_degraded_views([Sample(photo, 3)], tmp_path / "v1", views=2, seed=0)
    again = write_degraded_views([Sample(photo, 3)], tmp_path / "v2", views=2, seed=0)
    other = write_degraded_views([Sample(photo, 3)], tmp_path / "v3", views=1, seed=1)

    assert [s.label for s in first] == [3, 3]
    assert [s.path.read_bytes() for s in first] == [s.path.read_bytes() for s in again]
    assert first[0].path.read_bytes() != first[1].path.read_bytes()  # two views differ
    assert other[0].path.read_bytes() != first[0].path.read_bytes()  # another seed differs
    for sample in first:
        with Image.open(sample.path) as view:
            assert view.format == "JPEG"
            assert min(view.size) <= 160
            assert view.size[0] <= 300
            assert view.size[1] <= 220
    image, quality = degraded_view(photo, seed=0)
    assert 15 <= quality <= 60
    assert image.mode == "RGB"


def test_train_fits_the_head_on_the_photos_and_their_views_and_records_it(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=3, per_split=(12, 17, 6), size=40, seed=3)
    cache = tmp_path / "cache"
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    config = dogclf.TrainConfig(num_workers=0, device="cpu", cv_folds=3)

    def train(out: str) -> dict[str, Any]:
        dogclf.train(
            data,
            "tinynet",
            tmp_path / out,
            config=config,
            weights=None,
            progress=False,
            cache_dir=cache,
            degraded_views=1,
        )
        return json.loads((tmp_path / out / "config.json").read_text())

    saved = train("model")

    text = "\n".join(lines)
    assert "degraded views: 1 per training photo (36 images, seed 0, targets smoothed 0.2)" in text
    assert "cross-validation on 36 training images" in text  # the penalty is cross-validated on the photos alone
    assert saved["training"]["degraded_views"] == 1
    assert saved["training"]["degraded_smoothing"] == DEFAULT_VIEW_SMOOTHING == 0.2
    fit = saved["training"]["head_fit"]
    assert fit["final_c"] == pytest.approx(fit["c"] * 36 / 72)  # 36 photos + 36 views: the same penalty per photo
    assert f"final fit with the degraded views at C={fit['final_c']:.3g}" in text
    assert saved["training"]["n_train"] == 36  # the photos; the views are not training files
    assert len(list((cache / "degraded-views" / "tinynet").glob("*.jpg"))) == 36
    assert dogclf.load_model(tmp_path / "model").novelty.bank.shape == (36, 16)  # type: ignore[union-attr]
    lines.clear()
    train("again")
    assert "features: 36 cached, 0 extracted" in "\n".join(lines)  # the views' bytes and features are reused


def test_degraded_views_need_the_feature_path_and_a_count(tmp_path: Path, tiny_spec: dogclf.BackboneSpec) -> None:
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=2, per_split=(4, 2, 0), size=40, seed=1)
    augment = dogclf.TrainConfig(num_workers=0, device="cpu", augment=True)

    with pytest.raises(ValueError, match="--degraded-views adds views to the features extracted once"):
        dogclf.train(data, "tinynet", tmp_path / "m", config=augment, weights=None, degraded_views=1)
    with pytest.raises(ValueError, match="--degraded-views must be an integer >= 0, got -1"):
        dogclf.train(data, "tinynet", tmp_path / "m", weights=None, degraded_views=-1)


def _fitted_head(photos: FeatureSet, views: FeatureSet, smoothing: float) -> torch.nn.Module:
    model = DogClassifierNet(torch.nn.Identity(), build_head(8, 3, HeadConfig()), frozen=True)
    fit_lbfgs_head(
        model, photos, None, TrainConfig(device="cpu", penalty_c=1.0), extra=views, extra_smoothing=smoothing
    )
    return model.head


def test_smoothing_the_views_targets_makes_the_head_less_sure_of_views_only() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 2
    labels = torch.arange(300) % 3
    photos = FeatureSet(centres[labels] + 0.5 * torch.randn(300, 8, generator=generator), labels)
    views = FeatureSet(0.3 * centres[labels] + torch.randn(300, 8, generator=generator), labels)  # fainter, noisier

    plain, smoothed = _fitted_head(photos, views, 0.0), _fitted_head(photos, views, 0.3)

    def confidence(head: torch.nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.softmax(head(x), dim=1).max(dim=1).values.mean())

    assert confidence(smoothed, views.features) < confidence(plain, views.features) - 0.05
    with torch.no_grad():
        assert torch.equal(smoothed(photos.features).argmax(1), plain(photos.features).argmax(1))
    assert confidence(smoothed, photos.features) > 0.9  # the photos' targets stayed one-hot


def test_the_final_fit_with_views_keeps_the_penalty_per_photo_the_cv_chose() -> None:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 3
    photos = FeatureSet(
        torch.randn(3, 8, generator=generator)[labels] + torch.randn(90, 8, generator=generator), labels
    )
    views = FeatureSet(torch.randn(180, 8, generator=generator), labels.repeat(2))

    head = linear_layer(_fitted_head(photos, views, 0.0))  # C=1 for 90 photos, 270 rows in the final fit

    weight, bias, _, _ = fit_logistic(
        torch.cat([photos.features, views.features]), torch.cat([photos.labels, views.labels]), num_classes=3, c=1 / 3
    )
    assert torch.allclose(head.weight, weight, atol=1e-4)  # type: ignore[union-attr]
    assert torch.allclose(head.bias, bias, atol=1e-4)  # type: ignore[union-attr]


def test_degraded_smoothing_needs_the_lbfgs_head_and_a_fraction(tmp_path: Path, tiny_spec: dogclf.BackboneSpec) -> None:
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=2, per_split=(4, 2, 0), size=40, seed=1)
    loop = dogclf.TrainConfig(num_workers=0, device="cpu", head_solver="loop")

    with pytest.raises(ValueError, match="the epoch loop smooths every row alike"):
        dogclf.train(
            data, "tinynet", tmp_path / "m", config=loop, weights=None, degraded_views=1, degraded_smoothing=0.2
        )
    with pytest.raises(ValueError, match=r"--degraded-smoothing must be a number in \[0, 1\), got 1.5"):
        dogclf.train(data, "tinynet", tmp_path / "m", weights=None, degraded_views=1, degraded_smoothing=1.5)
