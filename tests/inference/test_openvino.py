"""The OpenVINO engine: picked by default where it runs, the same features as torch, converted once and cached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import IMAGEWOOF, needs_imagewoof, run_cli
from torch import nn

import dogclf
from dogclf.features.extract import ExtractOptions, InvalidExtractOptionsError, extract_features, resolve_engine
from dogclf.inference.openvino import resolve_engine as resolve
from dogclf.model import build_model

pytest.importorskip("openvino", reason="OpenVINO is not installed")

from dogclf.inference.openvino import OpenVinoBackbone

CPU = torch.device("cpu")


def _backbone(spec: dogclf.BackboneSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, 3, weights=None).backbone.eval()


def _images(tree: Path) -> list[Path]:
    return sorted((tree / "train").glob("*/*.jpg")) + sorted((tree / "valid").glob("*/*.jpg"))


@pytest.mark.parametrize(
    ("requested", "environ", "usable", "expected"),
    [
        ("auto", {}, True, "openvino"),
        (None, {}, True, "openvino"),
        ("auto", {}, False, "torch"),
        ("auto", {"DOGCLF_ENGINE": "torch"}, True, "torch"),
        ("auto", {"DOGCLF_ENGINE": "openvino"}, True, "openvino"),
        ("torch", {"DOGCLF_ENGINE": "openvino"}, True, "torch"),
        ("openvino", {}, True, "openvino"),
        ("onnxruntime", {}, True, "onnxruntime"),
    ],
)
def test_auto_picks_openvino_on_a_cpu_where_it_runs_unless_told(
    requested: str | None, environ: dict[str, str], usable: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dogclf.inference.openvino.openvino_usable", lambda: usable)
    assert resolve(requested, CPU, environ) == expected


def test_engine_errors_say_what_would_work() -> None:
    with pytest.raises(ValueError, match=r"unknown engine 'tensorrt'; use auto, torch, openvino, onnxruntime"):
        resolve("tensorrt", CPU, {})
    with pytest.raises(ValueError, match=r"unknown engine DOGCLF_ENGINE=fast"):
        resolve("auto", CPU, {"DOGCLF_ENGINE": "fast"})
    with pytest.raises(ValueError, match="runs on the CPU, but the device is cuda"):
        resolve("openvino", torch.device("cuda"), {})
    # A process-wide default never moves a GPU run onto the CPU.
    assert resolve("auto", torch.device("cuda"), {"DOGCLF_ENGINE": "openvino"}) == "torch"
    with pytest.raises(InvalidExtractOptionsError, match="unknown extraction engine 'fast'"):
        ExtractOptions(engine="fast")
    assert resolve_engine(ExtractOptions(engine="openvino", device="cpu", precision="fp32", compile=True)) == "torch"


def test_a_batch_spread_over_the_streams_keeps_every_image_in_its_place(
    tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    backbone = _backbone(tiny_spec)
    compiled = OpenVinoBackbone(backbone, 32, cache_dir=tmp_path)
    compiled.configure(threads=2)  # two streams on any CPU with two cores or more
    images = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(images)
    one_by_one = torch.cat([compiled(image[None]) for image in images])
    assert torch.allclose(one_by_one, expected, atol=1e-4)
    for size in (2, 5, 7):
        got = compiled(images[:size])
        assert got.shape == (size, expected.shape[1])
        assert got.dtype == torch.float32
        assert torch.allclose(got, one_by_one[:size], atol=1e-5)


def test_the_backbone_is_converted_once_and_then_read_from_the_cache(
    tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    backbone = _backbone(tiny_spec)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(images)
    first = OpenVinoBackbone(backbone, 32, cache_dir=tmp_path)
    got = first(images)
    assert first.loaded_from_cache is False
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999
    assert torch.allclose(got, expected, atol=1e-4)
    assert len(list(tmp_path.glob("*/backbone.xml"))) == 1

    again = OpenVinoBackbone(backbone, 32, cache_dir=tmp_path)
    assert torch.allclose(again(images), got)
    assert again.loaded_from_cache is True

    other = OpenVinoBackbone(_backbone(tiny_spec, seed=1), 32, cache_dir=tmp_path)  # other weights, other entry
    other(images)
    assert other.loaded_from_cache is False
    assert len(list(tmp_path.glob("*/backbone.xml"))) == 2
    assert not any(m.training for m in backbone.modules())


def test_a_damaged_or_unwritable_cache_costs_only_the_conversion(
    tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    backbone = _backbone(tiny_spec)
    images = torch.randn(2, 3, 32, 32)
    reference = OpenVinoBackbone(backbone, 32, cache_dir=tmp_path / "cache")(images)
    (entry,) = (tmp_path / "cache").glob("*/backbone.xml")
    entry.write_text("<not a model")
    damaged = OpenVinoBackbone(backbone, 32, cache_dir=tmp_path / "cache")
    assert torch.allclose(damaged(images), reference)
    assert damaged.loaded_from_cache is False

    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    assert torch.allclose(OpenVinoBackbone(backbone, 32, cache_dir=blocked / "sub")(images), reference)


class _Untraceable(nn.Module):
    """A backbone OpenVINO cannot convert (it refuses to be traced)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("this backbone cannot be traced")
        return self.inner(x)


def test_extraction_falls_back_to_torch_under_auto_and_fails_when_openvino_was_asked_for(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _images(tiny_tree)[:4]
    backbone = _Untraceable(_backbone(tiny_spec))
    fp32 = {"batch_size": 4, "num_workers": 0, "precision": "fp32", "device": "cpu"}
    torch_features = extract_features(backbone, paths, tiny_spec.preprocessing, ExtractOptions(**fp32, engine="torch"))
    with pytest.raises(RuntimeError, match="cannot be traced"):
        extract_features(backbone, paths, tiny_spec.preprocessing, ExtractOptions(**fp32, engine="openvino"))
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="dogclf"):
        patch.setenv("DOGCLF_ENGINE", "openvino")
        fallback = extract_features(backbone, paths, tiny_spec.preprocessing, ExtractOptions(**fp32, engine="auto"))
    assert torch.equal(fallback, torch_features)
    assert "extracting with torch" in caplog.text


def test_train_extracts_with_openvino_by_default_and_torch_reuses_its_cache(
    tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--data", str(tiny_tree), "--backbone", "tinynet", "--weights", "none", "--cache-dir", str(tmp_path)]
    common += ["--precision", "fp32"]  # fp32 features are shared across engines (bf16 ones are kept per engine)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DOGCLF_ENGINE")  # the default a user gets
        patch.setattr("dogclf.inference.openvino.openvino_usable", lambda: True)
        code, out, err = run_cli(["train", *common, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "openvino (cache" in out
    code, out, err = run_cli(["train", *common, "--engine", "torch", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert " 0 extracted" in out  # torch reads the fp32 features OpenVINO extracted


@needs_imagewoof()
def test_openvino_and_torch_features_of_real_photos_agree() -> None:
    """fp32 features agree closely enough to share the feature cache; bf16 ones keep the fp32 features' direction."""
    from dogclf.backbones.weights import build_backbone

    spec = dogclf.get_backbone("efficientnet_lite0")
    backbone = build_backbone(spec, "imagenet", progress=False)
    paths = [p for folder in sorted((IMAGEWOOF / "train").iterdir()) for p in sorted(folder.iterdir())[:2]]

    def features(engine: str, precision: str) -> torch.Tensor:
        options = ExtractOptions(precision=precision, num_workers=0, device="cpu", engine=engine)
        return extract_features(backbone, paths, spec.preprocessing, options)

    reference = features("torch", "fp32")
    assert nn.functional.cosine_similarity(features("openvino", "fp32"), reference).min() > 0.9999
    assert nn.functional.cosine_similarity(features("openvino", "bf16"), reference).min() > 0.99
