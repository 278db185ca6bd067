"""Fast feature extraction: equal to the plain eager model, in order, any worker count, precisions, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import IMAGEWOOF, needs_imagewoof
from torch import nn

import dogclf
from dogclf.data.images import load_rgb
from dogclf.data.transforms import eval_transform
from dogclf.errors import BackboneContractError, DogclfError, UnreadableImageError
from dogclf.features.extract import (
    ExtractOptions,
    InvalidExtractOptionsError,
    extract_features,
    iter_feature_batches,
    iter_features,
    resolve_precision,
)
from dogclf.features.keys import image_key
from dogclf.model import build_model

CPU32 = ExtractOptions(batch_size=5, num_workers=0, precision="fp32", device="cpu")


def _images(tree: Path) -> list[Path]:
    return sorted((tree / "train").glob("*/*.jpg")) + sorted((tree / "valid").glob("*/*.jpg"))


def _backbone(spec: dogclf.BackboneSpec) -> nn.Module:
    torch.manual_seed(0)
    return build_model(spec, 3, weights=None).backbone


def _eager(backbone: nn.Module, paths: list[Path], spec: dogclf.BackboneSpec) -> torch.Tensor:
    """The plain reference: decode, eval transform, stack, one fp32 NCHW forward in eval mode."""
    pre = spec.preprocessing
    transform = eval_transform(pre)
    batch = torch.stack([transform(load_rgb(p, min_size=pre.resize_size)) for p in paths])
    training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(batch)
    backbone.train(training)
    return out


def test_fp32_features_equal_the_eager_model_in_item_order(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    paths = _images(tiny_tree)
    backbone = _backbone(tiny_spec)
    expected = _eager(backbone, paths, tiny_spec)
    for channels_last in (False, True):
        options = ExtractOptions(
            batch_size=5, num_workers=0, precision="fp32", device="cpu", channels_last=channels_last
        )
        got = extract_features(backbone, paths, tiny_spec.preprocessing, options)
        assert got.shape == (len(paths), tiny_spec.num_features)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    in_pieces = ExtractOptions(batch_size=8, forward_batch=3, num_workers=0, precision="fp32", device="cpu")
    torch.testing.assert_close(
        extract_features(backbone, paths, tiny_spec.preprocessing, in_pieces), expected, rtol=1e-5, atol=1e-5
    )
    reordered = paths[::-1]
    got = extract_features(backbone, [str(p) for p in reordered], tiny_spec.preprocessing, CPU32)
    torch.testing.assert_close(got, expected.flip(0), rtol=1e-5, atol=1e-5)


def test_bf16_features_are_close_to_fp32(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    paths = _images(tiny_tree)
    backbone = _backbone(tiny_spec)
    fp32 = extract_features(backbone, paths, tiny_spec.preprocessing, CPU32)
    bf16_options = ExtractOptions(batch_size=5, num_workers=0, precision="bf16", device="cpu")
    bf16 = extract_features(backbone, paths, tiny_spec.preprocessing, bf16_options)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32), "bf16 autocast should change the low bits"
    cosine = nn.functional.cosine_similarity(bf16, fp32, dim=1)
    assert cosine.min() > 0.999, cosine.min()
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.02)


def test_iter_features_yields_every_position_once_in_order(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    paths = _images(tiny_tree)[:23]
    batches = list(iter_features(_backbone(tiny_spec), paths, tiny_spec.preprocessing, CPU32))
    assert [len(positions) for positions, _ in batches] == [5, 5, 5, 5, 3]
    assert [p for positions, _ in batches for p in positions] == list(range(23))
    for positions, features in batches:
        assert features.shape == (len(positions), tiny_spec.num_features)
        assert features.device.type == "cpu"
        assert features.dtype == torch.float32
        assert not features.is_inference(), "a head must be able to train on the yielded features"
    assert list(iter_features(_backbone(tiny_spec), [], tiny_spec.preprocessing, CPU32)) == []
    assert extract_features(_backbone(tiny_spec), [], tiny_spec.preprocessing, CPU32).shape == (0, 0)


@pytest.mark.slow
def test_worker_processes_give_the_same_features(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    paths = _images(tiny_tree)
    backbone = _backbone(tiny_spec)
    in_process = extract_features(backbone, paths, tiny_spec.preprocessing, CPU32)
    two_workers = ExtractOptions(batch_size=5, num_workers=2, precision="fp32", device="cpu")
    assert torch.equal(extract_features(backbone, paths, tiny_spec.preprocessing, two_workers), in_process)


def test_the_backbone_is_left_as_it_was(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    backbone = _backbone(tiny_spec)
    backbone.train()
    backbone[1].eval()  # a mixed-mode module: modes are restored one by one
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    grads = [p.requires_grad for p in backbone.parameters()]
    options = ExtractOptions(batch_size=5, num_workers=0, precision="bf16", device="cpu", channels_last=True)
    extract_features(backbone, _images(tiny_tree), tiny_spec.preprocessing, options)
    assert [m.training for m in backbone] == [True, False, True, True, True, True, True, True]
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BatchNorm statistics must not change (eval mode)"
    assert all(t.is_contiguous() for t in after.values()), "channels-last is undone (safetensors needs contiguous)"
    assert [p.requires_grad for p in backbone.parameters()] == grads


def test_an_unreadable_image_is_named_after_the_batches_before_it(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [*_images(tiny_tree)[:7], broken]
    seen: list[int] = []

    def consume() -> None:
        for positions, _ in iter_features(_backbone(tiny_spec), paths, tiny_spec.preprocessing, CPU32):
            seen.extend(positions)

    with pytest.raises(UnreadableImageError, match=r"broken\.jpg: not an image Pillow can identify") as info:
        consume()
    assert seen == [0, 1, 2, 3, 4]
    assert "find_unreadable" in str(info.value)


def test_batches_report_unreadable_images_and_key_each_image_by_the_bytes_decoded(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    paths = [*_images(tiny_tree)[:6], broken, *_images(tiny_tree)[6:9], empty]
    backbone = _backbone(tiny_spec)
    batches = list(iter_feature_batches(backbone, paths, tiny_spec.preprocessing, CPU32))
    assert [b.positions for b in batches] == [[0, 1, 2, 3, 4], [5, 7, 8, 9], []]
    assert [position for position, _ in batches[1].unreadable] == [6]
    assert "not an image Pillow can identify" in batches[1].unreadable[0][1]
    assert batches[2].unreadable == [(10, "empty file (0 bytes)")]
    assert [k for b in batches for k in b.keys] == [image_key(paths[p]) for b in batches for p in b.positions]
    readable = [p for i, p in enumerate(paths) if i not in (6, 10)]
    expected = extract_features(backbone, readable, tiny_spec.preprocessing, CPU32)
    torch.testing.assert_close(torch.cat([b.features for b in batches if b.positions]), expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_work_given_for_the_decoding_wait_runs_once_before_the_first_batch(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, workers: int
) -> None:
    options = ExtractOptions(batch_size=5, num_workers=workers, precision="fp32", device="cpu")
    events: list[str] = []
    batches = iter_feature_batches(
        _backbone(tiny_spec),
        _images(tiny_tree),
        tiny_spec.preprocessing,
        options,
        while_decoding=lambda: events.append("work"),
    )
    for _ in batches:
        events.append("batch")
    assert events[:2] == ["work", "batch"]
    assert events.count("work") == 1
    nothing = iter_feature_batches(
        _backbone(tiny_spec), [], tiny_spec.preprocessing, options, while_decoding=events.clear
    )
    assert list(nothing) == []
    assert events, "nothing to extract: nothing to overlap"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "half"}, r"unknown extraction precision 'half'; use one of auto, fp32, bf16, fp16"),
        ({"batch_size": 0}, r"batch size must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, r"batch size must be an int >= 1, got 2.5"),
        ({"num_workers": -1}, r"num_workers must be an int >= 0 or None .*got -1"),
        ({"forward_batch": 0}, r"forward_batch must be an int >= 1 or None \(pick for the device\), got 0"),
        ({"device": None}, r"device must be a string \(auto, cpu, cuda, cuda:N\), got None"),
    ],
)
def test_bad_options_say_what_would_work(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidExtractOptionsError, match=message) as info:
        ExtractOptions(**changes)  # type: ignore[arg-type]
    assert isinstance(info.value, DogclfError)
    assert isinstance(info.value, ValueError)


def test_precision_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(ExtractOptions(precision="fp32"), cpu) == "fp32"
    assert resolve_precision(ExtractOptions(precision="bf16"), cpu) == "bf16"
    assert resolve_precision(ExtractOptions(precision="auto"), cpu) in ("fp32", "bf16")
    with pytest.raises(InvalidExtractOptionsError, match=r"fp16 needs a CUDA device, but the device is cpu; use bf16"):
        resolve_precision(ExtractOptions(precision="fp16"), cpu)
    assert ExtractOptions(num_workers=3).workers() == 3
    assert ExtractOptions(batch_size=64, forward_batch=16).forward_size(cpu) == 16
    assert ExtractOptions(batch_size=4, forward_batch=16).forward_size(cpu) == 4
    assert 8 <= ExtractOptions(batch_size=64).forward_size(cpu) <= 64
    assert ExtractOptions(batch_size=64).forward_size(torch.device("cuda")) == 64
    assert 0 <= ExtractOptions().workers() <= 4


def test_a_backbone_that_does_not_return_features_is_refused(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    not_pooled = nn.Conv2d(3, 4, 3)
    with pytest.raises(BackboneContractError, match=r"returned shape \(5, 4, 30, 30\) for 5 images; it must return"):
        extract_features(not_pooled, _images(tiny_tree), tiny_spec.preprocessing, CPU32)


def test_progress_bar_only_when_asked_or_on_a_terminal(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    backbone, paths = _backbone(tiny_spec), _images(tiny_tree)
    extract_features(backbone, paths, tiny_spec.preprocessing, CPU32)  # stderr is not a terminal under pytest
    assert capfd.readouterr().err == ""
    extract_features(backbone, paths, tiny_spec.preprocessing, CPU32, progress=True)
    assert "img/s" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
@needs_imagewoof()
def test_bf16_keeps_real_pretrained_features() -> None:
    from dogclf.backbones.weights import build_backbone

    spec = dogclf.get_backbone("efficientnet_lite0")
    backbone = build_backbone(spec, "imagenet", progress=False)
    paths = [sorted(folder.iterdir())[0] for folder in sorted((IMAGEWOOF / "train").iterdir())]
    fp32 = extract_features(backbone, paths, spec.preprocessing, ExtractOptions(precision="fp32", num_workers=0))
    bf16 = extract_features(backbone, paths, spec.preprocessing, ExtractOptions(precision="bf16", num_workers=0))
    assert nn.functional.cosine_similarity(bf16, fp32, dim=1).min() > 0.99
