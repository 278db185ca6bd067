"""What ``dogclf sagemaker train|tune`` sends reaches ``dogclf train`` inside the job as the user meant it."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest

from dogclf.cli import main
from dogclf.pipeline.options import train_parser
from dogclf.sagemaker.entry import container_train_args
from dogclf.sagemaker.environment import ContainerEnvironment

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
_DRY = {"AWS_REGION": "eu-west-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
# Options the container sets itself (the launcher hides them); the rest of dogclf train's switches reach the job.
_CONTAINER_SET = {"help", "progress", "resume", "overwrite"}


def _switches() -> list[str]:
    """Every form of every boolean option of ``dogclf train`` a user can type: --x, and --no-x where it exists."""
    forms = []
    for action in train_parser()._actions:
        if action.nargs == 0 and action.dest not in _CONTAINER_SET:
            forms += [o for o in action.option_strings if o.startswith("--")]
    return forms


def _job_argv(hyperparameters: dict[str, str]) -> list[str]:
    """The entry script's arguments, as the SageMaker training toolkit makes them from the job's hyperparameters."""
    mapping = pytest.importorskip("sagemaker_training.mapping", reason="the training toolkit is not installed")
    decoded = {}
    for key, value in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        try:
            decoded[key] = json.loads(value)  # what sagemaker_training.environment.read_hyperparameters does
        except ValueError:
            decoded[key] = value
    return [str(a) for a in mapping.to_cmd_args(decoded)]


def test_the_switch_forms_cover_every_boolean_option() -> None:
    assert {"--freeze", "--no-freeze", "--cache", "--no-cache", "--novelty", "--no-novelty"} <= set(_switches())
    assert {"--augment", "--strict", "--profile"} <= set(_switches())


@pytest.mark.parametrize("switch", _switches())
def test_every_boolean_option_reaches_dogclf_train_in_the_job_as_given(
    switch: str, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run", switch]
    assert main(args, environ=_DRY) == 0, capsys.readouterr().err
    request = json.loads(capsys.readouterr().out)

    argv = _job_argv(request["HyperParameters"])
    env = ContainerEnvironment.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    in_job = train_parser().parse_args(container_train_args(argv, env, tiny_tree))
    local = train_parser().parse_args(["--data", str(tiny_tree), "--out", str(tmp_path), switch])
    dest = next(a.dest for a in train_parser()._actions if switch in a.option_strings)
    assert getattr(in_job, dest) == getattr(local, dest), (switch, argv)
    assert not any(a.startswith("--no-no-") for a in argv)


def test_a_default_switch_is_not_sent(tiny_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run"]
    assert main(args, environ=_DRY) == 0
    sent = json.loads(capsys.readouterr().out)["HyperParameters"]
    assert not {"freeze", "cache", "novelty", "no-freeze", "augment"} & set(sent)


_SETTINGS = [
    "--subnets", "subnet-0abc,subnet-0def", "--security-group-ids", "sg-0123", "--network-isolation",
    "--tag", "project=dogs", "--tag", "cost-center=42",
    "--volume-kms-key", "arn:aws:kms:eu-west-1:123456789012:key/vol", "--output-kms-key", "alias/dogclf-out",
]  # fmt: skip


def _dry_run(command: str, tiny_tree: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    args = ["sagemaker", command, "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run", *extra]
    code = main(args, environ=_DRY)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_tune_keeps_what_train_keeps(tiny_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = _dry_run("train", tiny_tree, _SETTINGS, capsys)
    tuning = ["--tensorboard", "--debugger", "--objective-metric", "valid_loss", "--seed", "7", "--job-name", "tune-b"]
    tuned = _dry_run("tune", tiny_tree, [*_SETTINGS, *tuning, "--warm-start", "dogclf-261201-101010-ab12"], capsys)

    definition = tuned["TrainingJobDefinition"]
    assert definition["VpcConfig"] == trained["VpcConfig"] == {"Subnets": ["subnet-0abc", "subnet-0def"],
                                                                "SecurityGroupIds": ["sg-0123"]}  # fmt: skip
    assert definition["EnableNetworkIsolation"] is trained["EnableNetworkIsolation"] is True
    volume_key = "arn:aws:kms:eu-west-1:123456789012:key/vol"
    assert definition["ResourceConfig"]["VolumeKmsKeyId"] == trained["ResourceConfig"]["VolumeKmsKeyId"] == volume_key
    assert definition["OutputDataConfig"]["KmsKeyId"] == trained["OutputDataConfig"]["KmsKeyId"] == "alias/dogclf-out"
    assert {"Key": "project", "Value": "dogs"} in tuned["Tags"]
    assert {"Key": "cost-center", "Value": "42"} in trained["Tags"]
    assert [t for t in tuned["Tags"] if t["Key"] != "dogclf:backbone"] == [
        t for t in trained["Tags"] if t["Key"] != "dogclf:backbone"
    ]

    config = tuned["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "valid_loss"}
    assert config["RandomSeed"] == 7
    assert tuned["WarmStartConfig"] == {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "dogclf-261201-101010-ab12"}],
        "WarmStartType": "IdenticalDataAndAlgorithm",
    }
    static = definition["StaticHyperParameters"]
    assert (static["tensorboard"], static["rules"], static["profile"]) == ("tensorboard", "all", "true")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective-metric", "accuracy"], "--objective-metric 'accuracy' is not a metric the trials print"),
        (["--tensorboard", "s3://b/tb"], "pass --tensorboard alone"),
        (["--subnets", "subnet-0abc"], "needs both --subnets and --security-group-ids"),
        (["--tag", "novalue"], "expected KEY=VALUE"),
    ],
)
def test_tune_settings_that_cannot_work_are_one_clear_line(
    extra: list[str], message: str, tiny_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sagemaker", "tune", "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run", *extra]
    with pytest.raises(SystemExit) if extra[0] == "--tag" else nullcontext():
        assert main(args, environ=_DRY) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_trial_logs_tensorboard_into_its_own_checkpoint_folder(tmp_path: Path) -> None:
    env = ContainerEnvironment.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path), "TRAINING_JOB_NAME": "tune-b-003"})
    args = container_train_args(["--tensorboard", "tensorboard", "--backbone", "resnet18"], env, tmp_path)
    assert args[args.index("--tensorboard") + 1] == str(tmp_path / "checkpoints" / "tune-b-003" / "tensorboard")
    absolute = container_train_args(["--tensorboard", "/opt/ml/output/tb"], env, tmp_path)
    assert absolute[absolute.index("--tensorboard") + 1] == "/opt/ml/output/tb"


def test_a_minimised_objective_picks_the_lowest_trial(tmp_path: Path) -> None:
    from dogclf.sagemaker.tuning_job import write_tuning_results
    from dogclf.tuning.report import TrialRecord
    from dogclf.tuning.space import SEED_RESNET18_SPACE

    params = {"lr": 0.001, "batch_size": 16, "epochs": 5}
    records = [TrialRecord(0, "COMPLETE", 0.9, params), TrialRecord(1, "COMPLETE", 0.4, {**params, "lr": 0.002})]
    best, _, _ = write_tuning_results(
        tmp_path, records, space=SEED_RESNET18_SPACE, metric="valid_loss", job_name="t", backbone="resnet18",
        maximize=False,
    )  # fmt: skip
    payload = json.loads(best.read_text())
    assert (payload["value"], payload["direction"], payload["params"]["lr"]) == (0.4, "minimize", 0.002)


def test_tune_local_says_it_cannot_warm_start(tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["sagemaker", "tune", "--local", "--out", str(tmp_path), "--data", str(tiny_tree), "--warm-start", "old-1"]
    assert main(args, environ=_DRY) == 2
    assert (
        "--warm-start starts from SageMaker tuning jobs' trials, which --local does not have" in capsys.readouterr().err
    )
