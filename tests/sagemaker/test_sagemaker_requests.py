"""Requests AWS would refuse are refused here first, before any upload: strategy rules and the model's constraints."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from dogclf.cli import main
from dogclf.sagemaker.request_check import RequestError, validate_request
from dogclf.sagemaker.training_job import TrainingJobSpec, plan_request
from dogclf.sagemaker.tuning_job import TuningError, build_tuning_request
from dogclf.tuning.space import DEFAULT_SPACE, SEED_RESNET18_SPACE, Categorical, SearchSpace

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


def _template(tmp_path: Path, **spec: Any) -> dict[str, Any]:
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "valid").mkdir(exist_ok=True)
    return plan_request(
        TrainingJobSpec(backbone="resnet18", **spec),
        str(tmp_path),
        region="us-east-1",
        role=ROLE,
        bucket="b",
        prefix="dogclf",
        name="tune-a",
        tuning_job="tune-a",
    )


@pytest.mark.parametrize(("space", "most"), [(DEFAULT_SPACE, 15), (SEED_RESNET18_SPACE, 10)])
def test_hyperband_turns_early_stopping_off_and_gets_its_epoch_budget(
    space: SearchSpace, most: int, tmp_path: Path
) -> None:
    request = build_tuning_request(
        _template(tmp_path), space, name="tune-a", max_jobs=9, max_parallel_jobs=3, strategy="Hyperband"
    )

    config = request["HyperParameterTuningJobConfig"]
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": most}}
    searched = {e["Name"] for entries in config["ParameterRanges"].values() for e in entries}
    assert "epochs" not in searched  # Hyperband allots the epochs; the rest of the space is searched
    assert {"lr", "batch-size"} <= searched
    assert request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == str(most)
    validate_request("CreateHyperParameterTuningJob", request)


def test_hyperband_without_searched_epochs_trains_up_to_the_given_epochs(tmp_path: Path) -> None:
    space = SearchSpace({"batch_size": Categorical((16, 32))})
    template = _template(tmp_path, hyperparameters={"epochs": "12"})
    request = build_tuning_request(template, space, name="t", max_jobs=4, max_parallel_jobs=2, strategy="Hyperband")
    hyperband = request["HyperParameterTuningJobConfig"]["StrategyConfig"]["HyperbandStrategyConfig"]
    assert hyperband == {"MinResource": 1, "MaxResource": 12}


def test_grid_takes_categorical_values_only_and_runs_every_combination(tmp_path: Path) -> None:
    with pytest.raises(TuningError) as info:
        build_tuning_request(_template(tmp_path), SEED_RESNET18_SPACE, name="t", max_jobs=20, max_parallel_jobs=2,
                             strategy="Grid")  # fmt: skip
    assert "Grid search takes categorical values only, and lr is a range: list the values" in str(info.value)

    grid = SearchSpace({"batch_size": Categorical((16, 32, 64)), "lr": Categorical((0.001, 0.01))})
    request = build_tuning_request(
        _template(tmp_path), grid, name="t", max_jobs=20, max_parallel_jobs=2, strategy="Grid"
    )
    limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert limits == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    validate_request("CreateHyperParameterTuningJob", request)


def test_every_constraint_of_the_model_is_checked_generically(tmp_path: Path) -> None:
    request = {**_template(tmp_path), "TrainingJobName": "my_job"}
    request["HyperParameters"] = {**request["HyperParameters"], **{f"extra-{i}": "1" for i in range(100)}}
    request["Tags"] = [{"Key": "owner", "Value": "x" * 257}, {"Key": "team", "Value": "dogs#1"}]
    request["ResourceConfig"] = {**request["ResourceConfig"], "InstanceType": "ml.m5.larg"}
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 3600, "MaxPendingTimeInSeconds": 3_000_000}

    with pytest.raises(RequestError) as info:
        validate_request("CreateTrainingJob", request)

    message = str(info.value)
    assert "TrainingJobName: 'my_job' does not match the pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}" in message
    assert f"HyperParameters: {len(request['HyperParameters'])} entries; at most 100 are allowed" in message
    assert "Tags[0].Value: 'xxxxxxxx" in message
    assert "has 257 characters; at most 256 are allowed" in message
    assert "Tags[1].Value: 'dogs#1' does not match the pattern" in message
    assert "ResourceConfig.InstanceType: 'ml.m5.larg' is not one of" in message
    assert "did you mean ml.m5.large?" in message
    assert "StoppingCondition.MaxPendingTimeInSeconds: 3000000 is above the maximum 2419200" in message


def test_the_launchers_requests_pass_the_check(tmp_path: Path) -> None:
    validate_request("CreateTrainingJob", {**_template(tmp_path), "TrainingJobName": "dogclf-resnet18-20261206-1"})


@pytest.mark.parametrize(
    ("command", "name", "message"),
    [
        ("tune", "dogclf-resnet18-seed-search-20261",
         "HyperParameterTuningJobName: 'dogclf-resnet18-seed-search-20261' has 33 characters; at most 32 are allowed"),
        ("train", "my_first_job", "TrainingJobName: 'my_first_job' does not match the pattern"),
        ("train", "j" * 64, "has 64 characters; at most 63 are allowed"),
    ],
)  # fmt: skip
def test_a_bad_job_name_is_refused_before_anything_is_uploaded(
    command: str, name: str, message: str, moto_environ: dict[str, str], tiny_tree: Path, tmp_path: Path, capsys: Any
) -> None:
    from dogclf.sagemaker.aws import Aws

    aws = Aws.from_environ(moto_environ)
    bucket = f"names-{uuid.uuid4().hex[:12]}"  # moto's state outlives the server: a bucket of this test's own
    aws.client("s3").create_bucket(Bucket=bucket)
    features = tmp_path / "features"
    features.mkdir()
    (features / "cached.npy").write_bytes(b"0" * 10)
    args = ["sagemaker", command, "--data", str(tiny_tree), "--role", ROLE, "--bucket", bucket]
    args += ["--job-name", name, "--features", str(features)]

    code = main(args, environ=moto_environ)

    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert aws.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
