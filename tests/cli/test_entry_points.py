"""Every entry point gives the same answer for the same image: ``dogclf predict``, ``dogclf serve``, the SageMaker
handlers and ``evaluate`` all run the one engine and the one post-processing, in the precision the model records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import IMAGEWOOF, jpeg
from serving.test_server import call, running

from dogclf import cli
from dogclf.artifact import save_model
from dogclf.classifier import load_model
from dogclf.data.folder import ClassInfo, Sample
from dogclf.evaluation import evaluate
from dogclf.model import HeadConfig, build_model
from dogclf.serving import handlers

NUM_CLASSES = 4


def _real_photo() -> Path | None:
    folder = IMAGEWOOF / "train"
    if not folder.is_dir():
        return None
    return sorted(sorted(folder.iterdir())[0].iterdir())[0]


@pytest.fixture
def model_dir(tmp_path: Path, tiny_spec: Any) -> Path:
    """A tiny model calibrated in bf16 (temperature 1: raw and calibrated scores agree), as `dogclf train` records."""
    torch.manual_seed(3)
    net = build_model(tiny_spec, NUM_CLASSES, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(20)
    classes = [ClassInfo(folder=f"{i:03d}.Breed_{i}", name=f"Breed {i}") for i in range(NUM_CLASSES)]
    calibration = {"temperature": 1.0, "unknown_threshold": 0.4, "precision": "bf16", "n": 10}
    return save_model(net.eval(), tmp_path / "model", spec=tiny_spec, classes=classes, head={}, calibration=calibration)


def _scores(answer: dict[str, Any]) -> dict[int, float]:
    return {p["index"]: p["score"] for p in answer["predictions"]}


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_predict_serve_sagemaker_and_evaluate_agree(
    source: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cpu_bf16: bool, engine: str
) -> None:
    photo = tmp_path / "dog.jpg"
    if source == "real":
        real = _real_photo()
        if real is None:
            pytest.skip(f"real photos not found at {IMAGEWOOF}")
        photo.write_bytes(real.read_bytes())
    else:
        photo.write_bytes(jpeg(11, size=(300, 220)))
    data = photo.read_bytes()

    assert cli.main(["predict", "--model", str(model_dir), str(photo), "--json", "--top-k", str(NUM_CLASSES)]) == 0
    captured = capsys.readouterr()
    (predicted,) = json.loads(captured.out)  # one entry per image
    # Calibrated in bf16: run natively where the CPU has bf16, else in fp32 (never emulated); the start-up line
    # names the engine that ran.
    expected = "bf16" if cpu_bf16 else "fp32"
    why = "bf16 (as calibrated)" if cpu_bf16 else "fp32 (calibrated in bf16; this CPU has no native bf16"
    assert f"dogclf predict: {engine} {why}" in captured.err

    classifier = load_model(model_dir)
    assert (classifier.precision, classifier.engine.name) == (expected, engine)
    with running(classifier, top_k=NUM_CLASSES) as (port, _):
        status, _, served = call(port, "POST", "/invocations", data, {"Content-Type": "image/jpeg"})
    assert status == 200

    model = handlers.model_fn(str(model_dir))
    body, _ = handlers.output_fn(handlers.predict_fn(handlers.input_fn(data, "image/jpeg"), model), "application/json")
    sagemaker = json.loads(body)
    assert (model.precision, model.engine.name) == (expected, engine)

    # evaluate: the image labelled with each class in turn; its loss is -log(score of that class).
    evaluated: dict[int, float] = {}
    tops = set()
    for label in range(NUM_CLASSES):
        report = evaluate(classifier, [Sample(path=photo, label=label)])
        evaluated[label] = math.exp(-report.loss)
        tops.add(max(range(NUM_CLASSES), key=lambda p: report.confusion[label][p]))
        assert report.precision == expected

    reference = _scores(predicted)
    assert len(reference) == NUM_CLASSES
    for name, answer in (("serve", _scores(served)), ("sagemaker", _scores(sagemaker)), ("evaluate", evaluated)):
        assert answer.keys() == reference.keys(), name
        for index, score in reference.items():
            assert answer[index] == pytest.approx(score, abs=1e-3), (name, index)
    top = predicted["predictions"][0]["index"]
    assert served["predictions"][0]["index"] == sagemaker["predictions"][0]["index"] == top
    assert tops == {top}
    assert served["unknown"] == sagemaker["unknown"] == predicted["unknown"]
