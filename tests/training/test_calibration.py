"""Temperature scaling, calibration error, the unknown threshold, and how training, loading and evaluate use them."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import _tiny_namespace, captured_log

import dogclf
from dogclf.backbones.registry import default_registry
from dogclf.cli import main
from dogclf.data.folder import load_splits
from dogclf.pipeline.run import _calibrate
from dogclf.training.calibration import (
    MIN_TEMPERATURE,
    Calibration,
    calibrate,
    collect_logits,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    unknown_threshold,
)

CLI_CALIBRATION_LINE = re.compile(
    r"^ECE (?P<before>[0-9.]+) -> (?P<after>[0-9.]+) \(temperature (?P<t>[0-9.]+)\); "
    r"unknown rate (?P<rate>[0-9.]+)% \(threshold (?P<threshold>[0-9.]+)\)$",
    re.M,
)


def _synthetic(temperature: float, *, n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Logits ``z`` and labels drawn from ``softmax(z / temperature)``: calibrated exactly at that temperature."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


# --- the pure functions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5, 5.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_temperature: float) -> None:
    logits, labels = _synthetic(true_temperature)

    fitted = fit_temperature(logits, labels)

    assert fitted == pytest.approx(true_temperature, rel=0.1)


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),  # no images
        (torch.randn(6, 1), torch.zeros(6, dtype=torch.long)),  # one class
        (torch.randn(6, 3), torch.full((6,), 2)),  # one label only: NLL falls forever as T -> 0
    ],
    ids=["empty", "one-class", "one-label"],
)
def test_fit_temperature_is_one_when_there_is_nothing_to_fit(logits: torch.Tensor, labels: torch.Tensor) -> None:
    assert fit_temperature(logits, labels) == 1.0


def test_fit_temperature_stays_in_range_on_separable_data() -> None:
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(3)) * 10

    assert fit_temperature(logits, logits.argmax(dim=1)) == MIN_TEMPERATURE


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.randn(4), torch.zeros(4), r"shape \(N, classes\)"),
        (torch.randn(4, 3), torch.zeros(5), "4 rows of logits but 5 labels"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), r"labels must lie in \[0, 2\]"),
        (torch.tensor([[0.0, math.nan]]), torch.zeros(1), "NaN or infinite"),
    ],
)
def test_bad_logits_are_errors_saying_what_is_wrong(logits: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)
    with pytest.raises(ValueError, match=message):
        calibrate(logits, labels)


def test_ece_matches_a_hand_computed_case() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1])

    # Bins (0.8667, 0.9333] holds 0.9 (right), (0.5333, 0.6] holds 0.6 (wrong), (0.7333, 0.8] holds 0.8 (right).
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0


def test_ece_is_small_for_calibrated_scores_and_large_for_overconfident_ones_until_calibrated() -> None:
    logits, labels = _synthetic(3.0, seed=1)

    calibrated_ece = expected_calibration_error(torch.softmax(logits / 3.0, dim=1), labels)
    overconfident_ece = expected_calibration_error(torch.softmax(logits, dim=1), labels)
    calibration = calibrate(logits, labels)

    assert calibrated_ece < 0.03
    assert overconfident_ece > 0.2
    assert calibration.ece_before == pytest.approx(overconfident_ece)
    assert calibration.ece_after < 0.03
    assert calibration.nll_after < calibration.nll_before
    assert calibration.n == len(labels)


def test_reliability_bins_are_the_hand_computed_case_and_add_up_to_the_ece() -> None:
    confidences = torch.tensor([0.9, 0.58, 0.78, 0.85])
    correct = torch.tensor([True, False, True, False])

    bins = reliability_bins(confidences, correct)

    # 0.58 in (0.5333, 0.6]; 0.78 in (0.7333, 0.8]; 0.85 and 0.9 in (0.8, 0.8667] and (0.8667, 0.9333].
    assert [(b["n"], b["accuracy"]) for b in bins] == [(1, 0.0), (1, 1.0), (1, 0.0), (1, 1.0)]
    assert [b["confidence"] for b in bins] == pytest.approx([0.58, 0.78, 0.85, 0.9])
    assert bins[0]["low"] == pytest.approx(8 / 15)
    assert bins[0]["high"] == pytest.approx(9 / 15)
    logits, labels = _synthetic(2.0, n=500, seed=4)
    top, predicted = torch.softmax(logits, dim=1).max(dim=1)
    table = reliability_bins(top, predicted == labels)
    weighted_gap = sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in table) / 500
    assert sum(b["n"] for b in table) == 500
    assert weighted_gap == pytest.approx(expected_calibration_error(torch.softmax(logits, dim=1), labels))


def test_ece_needs_images() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize(("n", "kept"), [(1000, 950), (20, 19), (9, 9), (1, 1)])
def test_unknown_threshold_keeps_the_requested_fraction(n: int, kept: int) -> None:
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))

    threshold = unknown_threshold(scores, keep=0.95)

    assert int((scores >= threshold).sum()) == kept
    assert unknown_threshold(scores, keep=1.0) == pytest.approx(float(scores.min()))


@pytest.mark.parametrize(
    ("scores", "keep", "message"),
    [([0.5], 0.0, r"keep must be a fraction in \(0, 1\]"), ([0.5], 1.5, "keep must be"), ([], 0.95, "at least one")],
)
def test_unknown_threshold_rejects_bad_input(scores: list[float], keep: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        unknown_threshold(scores, keep=keep)


def test_calibration_round_trips_through_json_and_reads_old_configs() -> None:
    logits, labels = _synthetic(2.0, n=500)
    calibration = calibrate(logits, labels, keep=0.9)

    restored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))

    assert restored == calibration
    assert Calibration.from_dict(None) == Calibration.from_dict({}) == Calibration()
    assert Calibration().temperature == 1.0
    assert Calibration().unknown_threshold is None
    assert calibrate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == Calibration()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        Calibration.from_dict({"temperature": 0})


# --- training, loading, evaluating -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-epoch tinynet run (frozen: on extracted features) on a small tree (valid: 51 images), with its log."""
    root = tmp_path_factory.mktemp("calibrated")
    data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=(8, 17, 3), size=40, seed=1)
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/training/test_calibration.py")  # type: ignore[operator]
    # The epoch loop, and no novelty score: these tests are about the temperature and the softmax threshold, which
    # decides "unknown" for a model without a novelty score (tests/inference/test_novelty.py covers models with one).
    config = dogclf.TrainConfig(epochs=2, batch_size=8, num_workers=0, device="cpu", head_solver="loop")
    try:
        # Frozen: the head trains on extracted features and calibration uses their valid logits. fp32 extraction, so
        # those logits are the ones the loaded model computes (bfloat16 features would shift the fit slightly).
        with captured_log() as lines:
            dogclf.train(
                data,
                "tinynet",
                root / "model",
                config=config,
                weights=None,
                precision="fp32",
                progress=False,
                novelty=False,
            )
    finally:
        registry.unregister("tinynet")
    return {"data": data, "model": root / "model", "log": lines}


def test_training_fits_and_stores_the_calibration(trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec) -> None:
    config = json.loads((trained["model"] / "config.json").read_text(encoding="utf-8"))
    stored = Calibration.from_dict(config["calibration"])
    splits = load_splits(trained["data"])
    classifier = dogclf.load_model(trained["model"])
    logits, labels = collect_logits(classifier.net, splits.valid, tiny_spec.preprocessing, batch_size=8, device="cpu")

    assert stored.n == 51
    assert stored.keep == 0.95
    assert stored.temperature != 1.0  # 3 classes after 2 epochs are far from calibrated
    assert stored.unknown_threshold is not None
    refit = calibrate(logits, labels)  # the same fit, redone from the loaded model's logits of the valid images
    assert stored.temperature == pytest.approx(refit.temperature, rel=1e-3)
    assert stored.unknown_threshold == pytest.approx(refit.unknown_threshold, abs=1e-4)
    assert stored.ece_after == pytest.approx(refit.ece_after, abs=1e-4)
    summary = [line for line in trained["log"] if line.startswith("calibration:")]
    assert summary == [
        f"calibration: temperature={stored.temperature:.2f} ece {stored.ece_before:.3f} -> {stored.ece_after:.3f}; "
        f"unknown threshold {stored.unknown_threshold:.3f} keeps 95% of valid (n=51)"
    ]


def test_training_through_the_backbone_calibrates_on_the_valid_images(
    trained: dict[str, Any], tmp_path: Path, tiny_spec: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    result = dogclf.train(
        trained["data"],
        "tinynet",
        tmp_path / "m",
        config=config,
        weights=None,
        freeze=False,
        progress=False,
    )
    stored = Calibration.from_dict(json.loads((result.model_dir / "config.json").read_text())["calibration"])
    net = dogclf.load_model(result.model_dir).net
    # The pass through the images runs in the precision the model will be served in, and the calibration says which.
    assert stored.precision in ("fp32", "bf16")
    logits, labels = collect_logits(
        net, result.splits.valid, tiny_spec.preprocessing, batch_size=4, device="cpu", precision=stored.precision
    )

    assert stored.n == len(result.splits.valid) == 51
    assert stored.temperature == pytest.approx(calibrate(logits, labels).temperature, rel=1e-3)
    assert sum(line.startswith("calibration: temperature=") for line in lines) == 1


def test_loaded_model_applies_the_temperature_and_threshold(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec
) -> None:
    classifier = dogclf.load_model(trained["model"], precision="fp32")  # compared with fp32 logits to 1e-6
    stored = json.loads((trained["model"] / "config.json").read_text(encoding="utf-8"))["calibration"]
    paths = [s.path for s in load_splits(trained["data"]).split("test")]
    batch = classifier.preprocess(paths)

    with torch.inference_mode():
        logits = classifier.net(batch)
    probs = classifier.probabilities(batch)
    results = classifier.classify(paths)

    assert classifier.temperature == stored["temperature"]
    assert classifier.unknown_threshold == stored["unknown_threshold"]
    assert torch.allclose(probs, torch.softmax(logits / stored["temperature"], dim=1), atol=1e-6)
    assert not torch.allclose(probs, torch.softmax(logits, dim=1), atol=1e-3)
    top = probs.max(dim=1).values
    assert [r.unknown for r in results] == [bool(s < stored["unknown_threshold"]) for s in top]


def test_model_saved_before_calibration_still_loads_uncalibrated(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    old = shutil.copytree(trained["model"], tmp_path / "old")
    config = json.loads((old / "config.json").read_text(encoding="utf-8"))
    del config["calibration"]
    (old / "config.json").write_text(json.dumps(config), encoding="utf-8")
    paths = [s.path for s in load_splits(trained["data"]).split("test")]

    classifier = dogclf.load_model(old, precision="fp32")  # compared with fp32 logits to 1e-6
    batch = classifier.preprocess(paths)
    with torch.inference_mode():
        logits = classifier.net(batch)
    report = dogclf.evaluate(classifier, load_splits(trained["data"]).test)

    assert classifier.temperature == 1.0
    assert classifier.unknown_threshold is None
    assert torch.allclose(classifier.probabilities(batch), torch.softmax(logits, dim=1), atol=1e-6)
    assert not any(r.unknown for r in classifier.classify(paths))
    assert report.unknown_rate is None
    assert report.ece == pytest.approx(report.ece_uncalibrated)


def test_evaluate_reports_ece_before_and_after_and_the_unknown_rate(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec
) -> None:
    classifier = dogclf.load_model(trained["model"], precision="fp32")  # compared with fp32 logits to 1e-6
    samples = load_splits(trained["data"]).valid
    paths = [s.path for s in samples]
    batch = classifier.preprocess(paths)
    with torch.inference_mode():
        logits = classifier.net(batch)
    labels = torch.tensor([s.label for s in samples])

    report = dogclf.evaluate(classifier, samples)
    as_dict = report.to_dict()

    assert report.ece == pytest.approx(expected_calibration_error(classifier.probabilities(batch), labels), abs=1e-6)
    assert report.ece_uncalibrated == pytest.approx(
        expected_calibration_error(torch.softmax(logits, dim=1), labels), abs=1e-6
    )
    stored = Calibration.from_dict(classifier.config["calibration"])  # fitted on these very images
    assert report.ece == pytest.approx(stored.ece_after, abs=1e-4)
    assert report.ece_uncalibrated == pytest.approx(stored.ece_before, abs=1e-4)
    assert stored.nll_after < stored.nll_before
    unknown = sum(r.unknown for r in classifier.classify(paths))
    assert report.unknown_rate == pytest.approx(unknown / len(samples))
    assert report.unknown_rate <= 0.05 + 1 / 51  # fitted to keep 95% of these very images (one borderline flip)
    assert {k: as_dict[k] for k in ("ece", "ece_uncalibrated", "unknown_rate")} == {
        "ece": report.ece,
        "ece_uncalibrated": report.ece_uncalibrated,
        "unknown_rate": report.unknown_rate,
    }
    assert as_dict["temperature"] == classifier.temperature
    json.dumps(as_dict)


def test_cli_evaluate_prints_ece_before_and_after_and_the_unknown_rate(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "evaluate",
        "--model",
        str(trained["model"]),
        "--data",
        str(trained["data"]),
        "--plot",
        str(tmp_path / "c.png"),
    ]

    code = main(args)
    text = capsys.readouterr().out
    json_code = main([*args, "--json"])
    payload = json.loads(capsys.readouterr().out)

    assert code == json_code == 0
    match = CLI_CALIBRATION_LINE.search(text)
    assert match, text
    assert float(match["before"]) == pytest.approx(payload["ece_uncalibrated"], abs=5e-4)
    assert float(match["after"]) == pytest.approx(payload["ece"], abs=5e-4)
    assert float(match["t"]) == pytest.approx(payload["temperature"], abs=5e-3)
    assert float(match["rate"]) == pytest.approx(100 * payload["unknown_rate"], abs=0.05)
    assert float(match["threshold"]) == pytest.approx(payload["unknown_threshold"], abs=5e-4)


def test_cli_evaluate_says_when_a_model_has_no_unknown_threshold(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = shutil.copytree(trained["model"], tmp_path / "old")
    config = json.loads((old / "config.json").read_text(encoding="utf-8"))
    del config["calibration"]
    (old / "config.json").write_text(json.dumps(config), encoding="utf-8")

    code = main(["evaluate", "--model", str(old), "--data", str(trained["data"])])

    assert code == 0
    assert re.search(
        r"^ECE ([0-9.]+) -> \1 \(temperature 1\.00\); unknown rate n/a \(the model has no unknown threshold\)$",
        capsys.readouterr().out,
        re.M,
    )


def test_training_without_validation_images_skips_calibration(
    trained: dict[str, Any], tiny_spec: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    splits = dataclasses.replace(load_splits(trained["data"]), valid=[])
    model = dogclf.load_model(trained["model"]).net
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    config = dogclf.TrainConfig(batch_size=8, num_workers=0, device="cpu")

    calibration = _calibrate(model, splits, tiny_spec, config, torch.device("cpu"))

    assert calibration == Calibration()
    assert lines == ["calibration: skipped (no validation images); temperature 1.0, no unknown threshold"]
