"""Hyperparameter validation, device selection, and the CLI's Ctrl-C messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dogclf.pipeline
from dogclf.cli import EXIT_INTERRUPTED, main
from dogclf.hardware import resolve_device
from dogclf.training.config import TrainConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
        ({"batch_size": 0}, "batch size must be an int >= 1, got 0"),
        ({"lr": 0.0}, "learning rate must be > 0, got 0.0"),
        ({"weight_decay": -1.0}, "weight decay must be >= 0, got -1.0"),
        ({"backbone_lr_scale": 0.0}, "backbone lr scale must be > 0, got 0.0"),
        ({"num_workers": -1}, "num_workers must be an int >= 0, got -1"),
    ],
)
def test_bad_hyperparameters_are_refused_with_the_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_auto_device_is_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_says_what_to_use_instead(name: str) -> None:
    with pytest.raises(
        ValueError, match=rf"--device {name} was asked for, but .* no usable CUDA device; use --device cpu"
    ):
        resolve_device(name)


def test_unknown_device_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"Unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_after_a_checkpoint_prints_the_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"written by a finished epoch")
    monkeypatch.setattr(dogclf.pipeline, "train", _interrupt)

    code = main(["train", "--data", str(tmp_path / "data dir"), "--out", str(out), "--epochs", "3"])

    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED
    assert f"Finished epochs are saved in {out / 'checkpoint.pt'}" in err
    assert f"dogclf train --data '{tmp_path / 'data dir'}' --out {out} --epochs 3 --resume" in err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ([], "the features extracted so far are kept in the feature cache, and a rerun continues from them"),
        (["--no-cache"], "nothing was saved"),
        (["--augment"], "nothing was saved"),
    ],
)
def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    said: str,
) -> None:
    monkeypatch.setattr(dogclf.pipeline, "train", _interrupt)

    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "model"), "--resume", *flags])

    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED
    assert f"Interrupted before the first epoch finished; {said}" in err
    assert "--resume" not in err
