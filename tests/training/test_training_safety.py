"""Training that fails safe: diverging loss, --overwrite, the resume fingerprint, tiny calibration sets, bad
fractions and unreachable weights refused before the data scan."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import dogclf
from dogclf.backbones.weights import check_weights_available
from dogclf.cli import main
from dogclf.errors import DatasetError, ModelDirError, TrainingDivergedError, WeightsUnavailableError
from dogclf.training.calibration import MIN_CALIBRATION_IMAGES, calibrate
from dogclf.training.callbacks import Callback, TrainState

# Port 9 (discard) on the loopback refuses at once: a "download" that can never leave the machine.
REFUSING_HOST = "http://127.0.0.1:9"


def _train(data: Path, out: Path, *, epochs: int = 2, **kwargs: Any) -> dogclf.TrainResult:
    config = kwargs.pop("config", None) or dogclf.TrainConfig(
        epochs=epochs, batch_size=8, num_workers=0, device="cpu", head_solver="loop"
    )
    return dogclf.train(data, "tinynet", out, config=config, weights=None, progress=False, **kwargs)


class _At(Callback):
    """Runs ``action(state)`` at the start or end of epoch ``epoch``."""

    def __init__(self, epoch: int, action: Any, *, when: str = "start") -> None:
        self.epoch, self.action, self.when = epoch, action, when

    def on_epoch_start(self, state: TrainState) -> None:
        if self.when == "start" and state.epoch == self.epoch:
            self.action(state)

    def on_epoch_end(self, state: TrainState, metrics: Any) -> None:
        if self.when == "end" and state.epoch == self.epoch:
            self.action(state)


def _interrupt(state: TrainState) -> None:
    raise KeyboardInterrupt


def _overflow(state: TrainState) -> None:
    with torch.no_grad():
        state.model.head[0].weight.fill_(float("inf"))  # as an overflowing update would leave it


# --- a loss that is not finite -------------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"

    with pytest.raises(TrainingDivergedError) as info:
        _train(tiny_tree, out, epochs=4, callbacks=[_At(2, _overflow)])

    message = str(info.value)
    assert "The training loss became nan at epoch 2" in message or "The training loss became inf at epoch 2" in message
    assert f"The checkpoint of epoch 1, the last good one, is kept in {out / 'checkpoint.pt'}" in message
    assert "lower --lr" in message
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_cli_reports_a_diverged_run_in_one_line(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--backbone", "tinynet", "--weights", "none", "--workers", "0", "--device", "cpu", "--no-progress"]

    code = main(["train", "--data", str(tiny_tree), "--out", str(tmp_path / "m"), *args, "--lr", "1e38"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dogclf train: error: The optimizer step overflowed (value cannot be converted")
    assert "No epoch finished, so there is no checkpoint to keep." in err
    assert err.count("\n") == 1


# --- --overwrite and the resume fingerprint --------------------------------------------------------------------------


def test_overwrite_removes_the_previous_run_before_training(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    out = tmp_path / "model"
    _train(tiny_tree, out, epochs=1)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "checkpoint.pt"}
    (out / "confusion_test.png").write_bytes(b"written by evaluate")
    dogclf_log.clear()  # from here on
    lines = dogclf_log

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_tree, out, epochs=3, overwrite=True, callbacks=[_At(1, _interrupt)])

    # Interrupted before its first epoch: nothing of the old run is left to be mistaken for this one, or resumed.
    assert not (out / "checkpoint.pt").exists()
    assert not (out / "model.safetensors").exists()
    assert not (out / "config.json").exists()
    assert (out / "confusion_test.png").read_bytes() == b"written by evaluate"  # not ours to delete
    assert f"--overwrite: removed the previous run's checkpoint.pt, config.json, model.safetensors from {out}" in lines
    with pytest.raises(ModelDirError, match="--resume was given but"):
        _train(tiny_tree, out, epochs=3, resume=True)


def test_resume_refuses_a_checkpoint_of_other_files_with_the_same_count(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_tree, out, epochs=3, callbacks=[_At(1, _interrupt, when="end")])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    first = sorted((tiny_tree / "train" / "001.Synthetic_red_discs").iterdir())[0]
    first.rename(first.with_name("renamed.jpg"))  # same number of images, not the same files

    with pytest.raises(ModelDirError) as info:
        _train(tiny_tree, out, epochs=3, resume=True)

    message = str(info.value)
    assert "is from a different run (train_files: checkpoint 'sha256:" in message
    assert "n_train" not in message  # the count is the same


def test_the_model_records_which_files_it_was_trained_on(tiny_spec: Any, tiny_tree: Path, tmp_path: Path) -> None:
    result = _train(tiny_tree, tmp_path / "model", epochs=1)
    training = json.loads((tmp_path / "model" / "config.json").read_text())["training"]

    assert training["train_files"] == result.splits.files_digest("train")
    assert training["valid_files"] == result.splits.files_digest("valid")
    assert training["train_files"] != training["valid_files"]


# --- calibration on too few images -----------------------------------------------------------------------------------


def test_calibration_on_a_tiny_valid_split_is_skipped_and_not_stored(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    lines = dogclf_log

    _train(tiny_tree, tmp_path / "model")  # 9 valid images
    classifier = dogclf.load_model(tmp_path / "model")

    assert "calibration" not in classifier.config
    assert classifier.temperature == 1.0
    assert classifier.unknown_threshold is None
    assert (
        f"calibration: skipped (9 validation images, fewer than the {MIN_CALIBRATION_IMAGES} a stable temperature "
        "needs); temperature 1.0, no unknown threshold"
    ) in lines


def test_calibration_on_validation_images_that_are_all_right_is_skipped() -> None:
    # Every image right: the NLL falls for ever as T -> 0, so there is no best temperature (the fit gave 0.15).
    labels = torch.arange(60) % 3
    logits = torch.nn.functional.one_hot(labels, 3).float() * 3.0

    calibration = calibrate(logits, labels)

    assert not calibration.fitted
    assert calibration.temperature == 1.0
    assert calibration.unknown_threshold is None
    assert calibration.skipped == "all 60 validation images are classified right, so no temperature fits best"


def test_calibration_whose_temperature_runs_to_a_bound_is_skipped() -> None:
    # Confidently wrong on a third of 60 images: the fit wants an ever larger temperature and stops at the bound.
    labels = torch.arange(60) % 3
    predicted = torch.where(torch.arange(60) % 3 == 0, (labels + 1) % 3, labels)
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 50.0

    calibration = calibrate(logits, labels)

    assert not calibration.fitted
    assert calibration.unknown_threshold is None
    assert calibration.skipped is not None
    assert "ran to its search bound 20, which is no fit" in calibration.skipped


# --- refused before the data scan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_percentage_as_valid_fraction_is_refused_before_anything_runs(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--data", str(tmp_path / "not_read"), "--out", str(tmp_path / "o"), "--valid-fraction", "20"])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --valid-fraction: must be between 0 and 1 (exclusive), e.g. 0.2, got 20 (for 20% pass 0.2)" in err


def test_train_refuses_a_bad_valid_fraction_before_reading_the_data(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    lines = dogclf_log

    with pytest.raises(
        DatasetError, match=r"valid fraction must be between 0 and 1 \(exclusive\), e\.g\. 0\.2, got 20"
    ):
        _train(tiny_tree / "train", tmp_path / "m", valid_fraction=20)

    assert lines == []  # not even "Reading ..."


def _offline_resnet18(tmp_path: Path) -> dogclf.BackboneSpec:
    """resnet18 whose weights live at a refusing address, with an empty cache folder."""
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    spec = dogclf.get_backbone("resnet18")
    return dataclasses.replace(
        spec, weights_url=f"{REFUSING_HOST}/resnet18-f37072fd.pth", weights_cache=lambda: str(cache)
    )


def test_unreachable_weights_fail_before_the_data_scan(tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]) -> None:
    spec = _offline_resnet18(tmp_path)
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    started = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as info:
        dogclf.train(tiny_tree, spec, tmp_path / "m", progress=False)

    assert time.monotonic() - started < 10
    assert lines == []  # the data was never read
    message = str(info.value)
    assert "Could not get the pretrained ImageNet weights for backbone 'resnet18'" in message
    assert "If this machine is offline" in message
    assert "--weights none" in message


def test_weights_already_in_the_cache_need_no_network(tmp_path: Path) -> None:
    spec = _offline_resnet18(tmp_path)
    (Path(spec.weights_cache()) / "resnet18-f37072fd.pth").write_bytes(b"cached")  # type: ignore[misc]

    check_weights_available(spec, "imagenet")  # no error: the refusing host is never asked
    check_weights_available(spec, "none")
    check_weights_available(spec, tmp_path / "local.pth")


def _timm_resnet18() -> dogclf.BackboneSpec:
    spec = dogclf.get_backbone("timm/resnet18")
    assert spec.weights_url == "https://huggingface.co/timm/resnet18.a1_in1k"
    return spec


@pytest.mark.parametrize(
    ("environ", "reason"),
    [({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"), ({"HF_ENDPOINT": REFUSING_HOST}, "Connection refused")],
    ids=["offline-flag", "unreachable-hub"],
)
def test_a_hub_backbone_fails_fast_when_the_hub_cannot_be_reached(
    tmp_path: Path, environ: dict[str, str], reason: str
) -> None:
    env = {**environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    started = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as info:
        check_weights_available(_timm_resnet18(), "imagenet", environ=env)

    assert time.monotonic() - started < 5
    message = str(info.value)
    assert reason in message
    assert "backbone 'timm/resnet18'" in message
    assert "--weights /path/to/model.safetensors" in message


def test_a_hub_backbone_in_the_hugging_face_cache_needs_no_network(tmp_path: Path) -> None:
    repo = tmp_path / "cache" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(b"cached")
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": REFUSING_HOST, "HF_HUB_OFFLINE": "1"}

    check_weights_available(_timm_resnet18(), "imagenet", environ=env)
