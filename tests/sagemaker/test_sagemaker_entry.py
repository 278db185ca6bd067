"""The training container's entry point, run the way the container runs it: through the real training toolkit."""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from pathlib import Path

import pytest
from conftest import captured_log

import dogclf
from dogclf.pipeline.options import train_parser
from dogclf.sagemaker import build_source_dir, metric_definitions, run_local
from dogclf.sagemaker.entry import main as entry_main
from dogclf.sagemaker.hyperparameters import HyperparameterError, normalize_argv, to_hyperparameters, unquote
from dogclf.training.log_line import EPOCH_FIELDS, format_epoch_line, format_test_line

pytest.importorskip("sagemaker_training", reason="the SageMaker training toolkit (dogclf[sagemaker-local]) is absent")

EPOCH_LINE = re.compile(r"^epoch=\d+ ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # the seeds' names and SageMaker's JSON-quoted categorical values (the first seed's best job)
        (
            ["--learning_rate", "0.0006684", "--batch_size", '"16"', "--epochs", '"5"'],
            ["--lr", "0.0006684", "--batch-size", "16", "--epochs", "5"],
        ),
        # dogclf's own names, the second seed's spelling, and --name=value
        (
            ["--lr", "0.0038", "--batch-size", "128", "--epochs=5"],
            ["--lr", "0.0038", "--batch-size", "128", "--epochs", "5"],
        ),
        # two levels of quoting, as a value written with json.dumps twice arrives
        (["--batch-size", '"\\"32\\""'], ["--batch-size", "32"]),
        # switches as SageMaker delivers booleans
        (["--augment", "true", "--strict", "False"], ["--augment"]),
        (["--freeze", "false"], ["--no-freeze"]),
        (["--freeze", '"true"', "--cache", "0"], ["--freeze", "--no-cache"]),
        (["--weight_decay", "-0.0"], ["--weight-decay", "-0.0"]),
        (["--Backbone", "resnet18"], ["--backbone", "resnet18"]),
    ],
)
def test_hyperparameters_as_sagemaker_delivers_them_become_dogclf_train_options(
    argv: list[str], expected: list[str]
) -> None:
    assert normalize_argv(argv, train_parser()) == expected
    train_parser().parse_args(["--data", "d", "--out", "o", *expected])  # and dogclf train accepts them


def test_a_switch_with_a_value_that_is_not_true_or_false_is_refused_by_name() -> None:
    with pytest.raises(HyperparameterError, match=r"--augment takes true or false, got 'maybe'"):
        normalize_argv(["--augment", "maybe"], train_parser())


def test_unquote_and_the_other_direction() -> None:
    assert unquote('"train.py"') == "train.py"
    assert unquote('"a" and "b"') == '"a" and "b"'  # not one JSON string: left alone
    assert to_hyperparameters({"batch_size": 16, "lr": 0.001, "freeze": True, "names": None}) == {
        "batch-size": "16",
        "lr": "0.001",
        "freeze": "true",
    }


def test_metric_regexes_read_nan_and_inf_as_printed() -> None:
    line = format_epoch_line({"epoch": 3, "train_loss": math.nan, "valid_loss": math.inf, "valid_top1": None})
    assert line == "epoch=3 train_loss=nan valid_loss=inf valid_top1=nan train_top1=nan seconds=0.0"
    definitions = {d["Name"]: re.compile(d["Regex"]) for d in metric_definitions()}
    assert definitions["train_loss"].search(line).group(1) == "nan"
    assert definitions["valid_loss"].search(line).group(1) == "inf"
    assert definitions["valid_top1"].search(line).group(1) == "nan"
    # train_top1's regex must not read valid_top1's value, nor test_top1's
    test_line = format_test_line({"top1": 0.5, "top5": 1.0, "n": 8})
    assert definitions["train_top1"].search(line).group(1) == "nan"
    assert definitions["train_top1"].search(test_line) is None
    assert definitions["test_top1"].search(test_line).group(1) == "0.5000"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _toolkit_environ() -> dict[str, str]:
    """The job sees only what the container would: no PYTHONPATH to this checkout or the tiny plugin."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOGCLF_FEATURE_CACHE")}
    return env | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_a_job_through_the_training_toolkit_leaves_a_deployable_model_and_a_restart_resumes(
    tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    source = build_source_dir(tmp_path / "source", backbone="tinynet")
    assert source.plugin == "dogclf-tinybb 0.1"
    hyperparameters = {
        "learning_rate": "0.05",
        "batch_size": '"8"',
        "epochs": '"2"',
        "backbone": "tinynet",
        "weights": "none",
        "workers": "0",
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": json.dumps(str(source.archive)),
    }
    channels = {"train": tiny_tree / "train", "validation": tiny_tree / "valid", "test": tiny_tree / "test"}
    out = tmp_path / "job"

    with captured_log() as log:
        result = run_local(
            out,
            hyperparameters=hyperparameters,
            channels=channels,
            job_name="dogclf-entry-test",
            metric_definitions=metric_definitions(),
            environ=_toolkit_environ(),
        )

    model = _members(result.model_tar)
    expected = {"config.json", "model.safetensors", "code/inference.py", "code/requirements.txt"}
    expected |= {
        "code/dogclf/__init__.py",
        "code/dogclf_tinybb.py",
        "code/dogclf_tinybb-0.1.dist-info/entry_points.txt",
    }
    assert expected <= set(model)
    assert not [name for name in model if name.endswith("checkpoint.pt")]
    training = json.loads(model["config.json"])["training"]
    assert (training["lr"], training["batch_size"], training["epochs"]) == (0.05, 8, 2)
    assert training["valid_source"] == "valid/"
    output = _members(result.output_tar)
    assert {"history.json", "history.csv", "history.png", "evaluation_test.json", "confusion_test.png"} <= set(output)
    assert json.loads(output["evaluation_test.json"])["n"] == 9
    assert (out / "checkpoints" / "dogclf-entry-test" / "checkpoint.pt").is_file()
    assert any("/opt/ml/checkpoints/feature-cache" in line for line in log)  # the cache on the instance's disk

    # Every metric regex reads exactly what the real training printed.
    epoch_lines = [line for line in log if EPOCH_LINE.match(line)]
    assert len(epoch_lines) == 2
    definitions = {d["Name"]: re.compile(d["Regex"]) for d in metric_definitions()}
    for line in epoch_lines:
        printed = dict(item.split("=") for item in line.split())
        for field in EPOCH_FIELDS:
            assert definitions[field.key].findall(line) == [printed[field.key]]
    assert result.metrics["valid_top1"] == float(dict(i.split("=") for i in epoch_lines[-1].split())["valid_top1"])
    assert result.metrics["test_top1"] == pytest.approx(json.loads(output["evaluation_test.json"])["top1"], abs=1e-4)
    assert json.loads((out / "metrics.json").read_text()) == result.metrics

    # The platform restarts an interrupted job with its checkpoints in place: it resumes by itself.
    with captured_log() as resumed:
        run_local(
            out,
            hyperparameters={**hyperparameters, "epochs": "3"},
            channels=channels,
            job_name="dogclf-entry-test",
            metric_definitions=metric_definitions(),
            environ=_toolkit_environ(),
        )
    assert any("of an earlier attempt of this job" in line for line in resumed)
    assert any("after epoch 2 of 3" in line for line in resumed)
    assert [line.split()[0] for line in resumed if EPOCH_LINE.match(line)] == ["epoch=3"]


def test_a_job_without_training_data_says_which_channels_it_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    environ = {
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_CHANNEL_FEATURES": str(tmp_path),
        "SAGEMAKER_BASE_DIR": str(tmp_path),
    }

    code = entry_main(["--epochs", "1"], environ=environ)

    assert code == 2
    message = capsys.readouterr().err
    assert "no training data channel (channels: features)" in message
    assert "'training' channel" in message


@pytest.mark.slow
def test_a_features_channel_from_a_local_run_spares_the_job_its_extraction(
    tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    # A local `dogclf train` caches the features of these photos (under their local paths) ...
    cache = tmp_path / "local-cache"
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")
    dogclf.train(tiny_tree, "tinynet", tmp_path / "local-model", config=config, weights=None, cache_dir=cache)
    # ... and the job, where the same photos sit under /opt/ml/input/data/training, reads them from the channel.
    source = build_source_dir(tmp_path / "source", backbone="tinynet")
    dogclf_log.clear()  # from here on
    log = dogclf_log
    run_local(
        tmp_path / "job",
        hyperparameters={
            "epochs": "1",
            "batch-size": "8",
            "backbone": "tinynet",
            "weights": "none",
            "workers": "0",
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": json.dumps(str(source.archive)),
        },
        channels={"training": tiny_tree, "features": cache},
        job_name="dogclf-features-test",
        environ=_toolkit_environ(),
    )
    [line] = [line for line in log if line.startswith("features: ")]
    assert line.startswith("features: 42 cached, 0 extracted")
    assert "/opt/ml/input/data/features" in line
