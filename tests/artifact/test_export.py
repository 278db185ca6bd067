"""``dogclf export``: an ONNX file (dynamic batch, logits and features) that gives the torch engine's answers on
photos, and the ONNX Runtime and OpenVINO engines that serve it.

The export itself takes several seconds (torch.export), so one file is made per session and shared.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import IMAGEWOOF, _tiny_namespace, jpeg

from dogclf import cli
from dogclf.artifact import save_model
from dogclf.artifact.export import ExportError, export_model, onnx_metadata, weights_digest
from dogclf.backbones.registry import default_registry
from dogclf.classifier import Classifier, load_model
from dogclf.classifier.runtimes import fresh_export
from dogclf.data.folder import ClassInfo
from dogclf.model import HeadConfig, build_model

pytest.importorskip("onnxruntime", reason="the onnx extra (dogclf[onnx]) is not installed")

NUM_CLASSES = 5


def _photos(tmp_path: Path, n: int) -> list[Path]:
    """Real photos when the shared data is here (one per breed, cycled), else synthetic JPEGs."""
    folder = IMAGEWOOF / "train"
    if folder.is_dir():
        breeds = sorted(folder.iterdir())
        return [sorted(breeds[i % len(breeds)].iterdir())[i // len(breeds)] for i in range(n)]
    paths = []
    for i in range(n):
        path = tmp_path / f"photo{i}.jpg"
        path.write_bytes(jpeg(i, size=(160, 120)))
        paths.append(path)
    return paths


def _save(folder: Path, spec: Any, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_model(spec, NUM_CLASSES, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(10)
    classes = [ClassInfo(folder=f"n{i:03d}", name=f"Breed {i}") for i in range(NUM_CLASSES)]
    return save_model(net.eval(), folder, spec=spec, classes=classes, head={})


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny model directory exported once with `dogclf export` (its model.onnx), and what the command printed."""
    spec = _tiny_namespace()["tiny"]()  # type: ignore[operator]
    registry = default_registry()
    registry.register(spec, override=True, source="tests/artifact/test_export.py")
    try:
        model_dir = _save(tmp_path_factory.mktemp("export") / "model", spec)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli.main(["export", str(model_dir), "--format", "onnx"]) == 0
    finally:
        registry.unregister("tinynet")
    return model_dir, printed.getvalue()


def assert_same_answers(got: Classifier, want: Classifier, photos: list[Path]) -> None:
    """Same top-1 and probabilities within 1e-3, image by image."""
    ours = [r for _, r in want.classify_stream(photos, top_k=NUM_CLASSES)]
    theirs = [r for _, r in got.classify_stream(photos, top_k=NUM_CLASSES)]
    assert len(ours) == len(theirs) == len(photos)
    for a, b in zip(theirs, ours, strict=True):
        assert a.predictions[0].index == b.predictions[0].index
        scores_a = {p.index: p.score for p in a.predictions}
        for p in b.predictions:
            assert scores_a[p.index] == pytest.approx(p.score, abs=1e-3)


def test_cli_export_writes_an_onnx_file_with_a_dynamic_batch_and_its_metadata(
    exported: tuple[Path, str], tiny_spec: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    model_dir, printed = exported
    out = model_dir / "model.onnx"
    assert f"to {out}" in printed
    assert "dynamic batch" in printed
    assert "outputs logits (batch, classes), features (batch, num_features)" in printed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    for batch in (1, 7):
        logits, features = session.run(None, {"images": torch.randn(batch, 3, 32, 32).numpy()})
        assert logits.shape == (batch, NUM_CLASSES)
        assert features.shape == (batch, 16)
    metadata = onnx_metadata(out)
    assert metadata["dogclf_weights_sha256"] == weights_digest(model_dir)
    config = json.loads(metadata["dogclf_config"])
    assert config["class_names"] == [f"Breed {i}" for i in range(NUM_CLASSES)]
    assert config["preprocessing"]["input_size"] == 32

    assert cli.main(["export", str(model_dir)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(model_dir, format="tflite")


def test_onnxruntime_and_openvino_engines_give_the_torch_engines_answers_on_photos(
    exported: tuple[Path, str], tiny_spec: Any, tmp_path: Path
) -> None:
    model_dir, _ = exported
    photos = _photos(tmp_path, 12)
    torch_fp32 = load_model(model_dir, precision="fp32")
    onnx = load_model(model_dir, engine="onnxruntime")
    assert onnx.engine.name == "onnxruntime"
    assert onnx.engine.path == model_dir / "model.onnx"  # the fresh export is used, not exported again
    assert onnx.precision == "fp32"
    assert_same_answers(onnx, torch_fp32, photos)
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    openvino = load_model(model_dir, engine="openvino", precision="fp32")
    assert openvino.engine.name == "openvino"
    assert_same_answers(openvino, torch_fp32, photos)


def test_an_export_from_other_weights_is_not_used(exported: tuple[Path, str], tiny_spec: Any, tmp_path: Path) -> None:
    model_dir, _ = exported
    assert fresh_export(model_dir) == model_dir / "model.onnx"
    retrained = _save(tmp_path / "retrained", tiny_spec, seed=1)
    shutil.copy(model_dir / "model.onnx", retrained / "model.onnx")
    assert fresh_export(retrained) is None  # `--engine onnxruntime` exports these weights anew instead
    assert fresh_export(tmp_path) is None
