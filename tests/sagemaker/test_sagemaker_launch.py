"""Launching training jobs against a moto server: what is uploaded and what is sent."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

import dogclf
from dogclf.cli import main
from dogclf.sagemaker import metric_definitions
from dogclf.sagemaker.aws import Aws
from dogclf.sagemaker.training_job import TrainingJob, TrainingJobFailed, TrainingJobSpec, launch_training_job

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


def _capture(aws: Aws, operation: str) -> list[dict[str, Any]]:
    """The parameters of every ``operation`` call sent through ``aws``'s clients (a botocore event hook)."""
    sent: list[dict[str, Any]] = []
    aws.session.events.register(f"provide-client-params.sagemaker.{operation}", lambda params, **_: sent.append(params))
    return sent


def _keys(aws: Aws, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture
def aws(moto_environ: dict[str, str]) -> Aws:
    context = Aws.from_environ(moto_environ)
    context.client("s3").create_bucket(Bucket="dogclf-test")
    return context


@pytest.mark.slow
def test_launch_uploads_data_and_code_once_and_sends_the_whole_request(
    aws: Aws, tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, dogclf_log: list[str]
) -> None:
    sent = _capture(aws, "CreateTrainingJob")
    spec = TrainingJobSpec(
        backbone="tinynet",
        hyperparameters={"lr": "0.0006684", "batch-size": "16", "epochs": "5"},
        instance_type="ml.m5.xlarge",
        spot=True,
        max_runtime=3600,
    )

    before = _keys(aws, "dogclf-test")  # moto's state outlives its server: other tests may have left objects
    planned = launch_training_job(spec, tiny_tree, aws=aws, role=ROLE, bucket="dogclf-test", name="job-a", dry_run=True)
    assert sent == []  # a dry run sends nothing,
    assert _keys(aws, "dogclf-test") == before  # and uploads nothing
    job = launch_training_job(spec, tiny_tree, aws=aws, role=ROLE, bucket="dogclf-test", name="job-a")

    [request] = sent
    assert request == planned.request == job.request
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312"
    )
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    hyperparameters = request["HyperParameters"]
    assert {k: hyperparameters[k] for k in ("lr", "batch-size", "epochs", "backbone")} == {
        "lr": "0.0006684",
        "batch-size": "16",
        "epochs": "5",
        "backbone": "tinynet",
    }
    assert hyperparameters["sagemaker_program"] == '"train.py"'
    source_uri = json.loads(hyperparameters["sagemaker_submit_directory"])
    assert source_uri == "s3://dogclf-test/dogclf/jobs/job-a/source/sourcedir.tar.gz"
    assert "sagemaker_torch_distributed_enabled" not in hyperparameters
    [training] = request["InputDataConfig"]
    assert training["ChannelName"] == "training"
    data_uri = training["DataSource"]["S3DataSource"]["S3Uri"]
    assert re.fullmatch(r"s3://dogclf-test/dogclf/data/data-[0-9a-f]{16}/", data_uri)  # named by the content
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://dogclf-test/dogclf/jobs/job-a/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert request["RoleArn"] == ROLE

    data_key = data_uri.removeprefix("s3://dogclf-test/")
    uploaded = _keys(aws, "dogclf-test", data_key)
    images = sorted(p.relative_to(tiny_tree).as_posix() for p in tiny_tree.rglob("*.jpg"))
    assert sorted(k.removeprefix(data_key) for k in uploaded if k.endswith(".jpg")) == images
    body = aws.client("s3").get_object(Bucket="dogclf-test", Key=source_uri.removeprefix("s3://dogclf-test/"))
    with tarfile.open(fileobj=io.BytesIO(body["Body"].read())) as tar:
        names = set(tar.getnames())
    assert {"train.py", "requirements.txt", "dogclf/sagemaker/entry.py", "dogclf_tinybb.py"} <= names
    described = aws.client("sagemaker").describe_training_job(TrainingJobName="job-a")
    assert described["HyperParameters"] == hyperparameters

    # Launching again on the same photos uploads none of them (same size and checksum).
    dogclf_log.clear()
    launch_training_job(spec, tiny_tree, aws=aws, role=ROLE, bucket="dogclf-test", name="job-b")
    assert f"0 uploaded (0.0 MB), {len(uploaded)} already there" in "\n".join(dogclf_log)


@pytest.mark.parametrize(
    ("instance_type", "count", "distributed"),
    [("ml.m5.large", 1, False), ("ml.m5.large", 2, True), ("ml.g5.12xlarge", 1, True), ("ml.g5.xlarge", 1, False)],
)
def test_several_instances_or_gpus_run_under_torchrun(
    instance_type: str, count: int, distributed: bool, tmp_path: Path
) -> None:
    from dogclf.sagemaker.training_job import plan_request

    (tmp_path / "train").mkdir()
    (tmp_path / "valid").mkdir()
    spec = TrainingJobSpec(backbone="resnet18", instance_type=instance_type, instance_count=count)
    request = plan_request(
        spec, str(tmp_path), region="eu-west-1", role=ROLE, bucket="b", prefix="p", name="j", features=None
    )
    flag = request["HyperParameters"].get("sagemaker_torch_distributed_enabled")
    assert flag == ("true" if distributed else None)
    assert request["ResourceConfig"]["InstanceCount"] == count
    build = "gpu" if instance_type.startswith("ml.g") else "cpu"
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(f"pytorch-training:2.8.0-{build}-py312")


def _cli(args: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args, environ=environ)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, [], "No AWS credentials were found. Configure"),
        ({"AWS_REGION": ""}, [], "No AWS region is configured. Pass --region"),
        ({}, ["--role", "SageMakerRole"], "--role must be an IAM role ARN such as arn:aws:iam::"),
        ({}, ["--instance-type", "ml.m5.larg"], "no training instance type 'ml.m5.larg'; did you mean ml.m5.large"),
        ({}, ["--data", "{tmp}/nowhere"], "Data folder '{tmp}/nowhere' does not exist"),
        ({}, ["--max-wait", "10"], "--max-wait (10 s) must be at least --max-runtime"),
    ],
)
def test_launch_errors_are_one_clear_line(
    change: dict[str, str],
    args: list[str],
    message: str,
    moto_environ: dict[str, str],
    tiny_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {k: v for k, v in ({**moto_environ, **change}).items() if v}
    base = ["sagemaker", "train", "--data", str(tiny_tree), "--backbone", "resnet18", "--role", ROLE]
    base += ["--bucket", "b", "--spot"]
    code, out, err = _cli([*base, *(a.format(tmp=tmp_path) for a in args)], environ, capsys)
    assert code == 2
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert moto_environ["AWS_SECRET_ACCESS_KEY"] not in out + err


def test_no_role_says_how_to_pass_one(moto_environ: dict[str, str], tiny_tree: Path, capsys: Any) -> None:
    code, _, err = _cli(["sagemaker", "train", "--data", str(tiny_tree), "--dry-run"], moto_environ, capsys)
    assert code == 2
    assert "SageMaker needs an execution role to run the job: pass --role arn:aws:iam::" in err


def test_dry_run_prints_the_request_as_json_and_needs_no_credentials(tiny_tree: Path, capsys: Any) -> None:
    environ = {"AWS_REGION": "eu-west-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/no"}
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--backbone", "resnet18", "--role", ROLE]
    code, out, err = _cli([*args, "--bucket", "b", "--dry-run", "--lr", "0.002", "--augment"], environ, capsys)
    assert code == 0, err
    request = json.loads(out)
    assert request["HyperParameters"]["lr"] == "0.002"
    assert request["HyperParameters"]["augment"] == "true"
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.eu-west-1.")


def test_wait_follows_status_and_log_lines_and_a_failure_shows_its_reason(aws: Aws, dogclf_log: list[str]) -> None:
    logs = aws.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="job-x/algo-1-1700000000")
    lines = ["Reading /opt/ml/input/data/training ...", "epoch=1 train_loss=2.1000 valid_loss=nan", "Traceback: boom"]
    logs.put_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs",
        logStreamName="job-x/algo-1-1700000000",
        logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": line} for i, line in enumerate(lines)],
    )
    job = TrainingJob("job-x", aws)
    failed = {
        "TrainingJobName": "job-x",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-x",
        "TrainingJobStatus": "Failed",
        "SecondaryStatus": "Failed",
        "FailureReason": "AlgorithmError: ExecuteUserScriptError: exit code 2",
        "SecondaryStatusTransitions": [{"Status": "Starting", "StartTime": 0, "StatusMessage": "Preparing"}],
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"VolumeSizeInGB": 30},
        "StoppingCondition": {},
        "CreationTime": 0,
        "ModelArtifacts": {"S3ModelArtifacts": ""},
    }
    with Stubber(aws.client("sagemaker")) as stub:
        stub.add_response("describe_training_job", failed, {"TrainingJobName": "job-x"})
        with pytest.raises(TrainingJobFailed) as info:
            job.wait(poll=0)
    message = str(info.value)
    assert "Training job job-x failed: AlgorithmError: ExecuteUserScriptError: exit code 2" in message
    assert "  Traceback: boom" in message
    printed = dogclf_log
    assert "[job-x] Starting: Preparing" in printed
    assert lines == [line for line in printed if line in lines]


def test_debugger_and_tensorboard_are_attached_to_the_request_and_a_closed_account_is_told_plainly(
    aws: Aws,
    tiny_tree: Path,
    moto_environ: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Played: an image with smdebug (no image dogclf can use has it; see tests/sagemaker/test_sagemaker_debugger.py).
    monkeypatch.setattr("dogclf.sagemaker.debugger.SMDEBUG_IMAGES_UP_TO", (2, 8))
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--backbone", "resnet18", "--role", ROLE]
    args += ["--bucket", "dogclf-test", "--job-name", "dbg", "--debugger", "--tensorboard", "--dry-run"]
    code, out, err = _cli(args, moto_environ, capsys)
    assert code == 0, err
    request = json.loads(out)
    assert request["TensorBoardOutputConfig"]["S3OutputPath"] == "s3://dogclf-test/dogclf/jobs/dbg/tensorboard"
    assert request["DebugHookConfig"]["S3OutputPath"].startswith("s3://dogclf-test/dogclf/jobs/dbg/debugger")
    assert {r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]} >= {"LossNotDecreasing"}
    assert "tensorboard" not in request["HyperParameters"]  # a job option, not a dogclf train flag

    from dogclf.sagemaker.aws import AwsError

    spec = TrainingJobSpec(backbone="resnet18")
    with Stubber(aws.client("sagemaker")) as stub:
        stub.add_client_error(
            "create_training_job", "ValidationException", "SageMaker Debugger is not available for this account"
        )
        with pytest.raises(AwsError) as info:
            launch_training_job(spec, tiny_tree, aws=aws, role=ROLE, bucket="dogclf-test", debugger=True)
    assert "This AWS account cannot use SageMaker Debugger" in str(info.value)
    assert "Run the job without --debugger" in str(info.value)


def test_the_billable_time_line_reports_instances_and_the_spot_saving() -> None:
    from dogclf.sagemaker.training_job import billable_line

    spot = {
        "BillableTimeInSeconds": 82,
        "TrainingTimeInSeconds": 100,
        "ResourceConfig": {"InstanceCount": 2},
        "EnableManagedSpotTraining": True,
    }
    assert billable_line(spot).startswith("billable 82 s x 2 instance(s) (training 100 s; managed spot saved 18%);")
    on_demand = {"BillableTimeInSeconds": 100, "TrainingTimeInSeconds": 100, "ResourceConfig": {"InstanceCount": 1}}
    assert billable_line(on_demand).startswith("billable 100 s x 1 instance(s) (training 100 s);")
    assert billable_line({"TrainingJobStatus": "Completed"}) == ""


def _channel_files(aws: Aws, request: dict[str, Any]) -> dict[str, int]:
    """What the job's training channel copies into the container: relative path -> size."""
    [training] = [c for c in request["InputDataConfig"] if c["ChannelName"] == "training"]
    prefix = training["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://dogclf-test/")
    return {key.removeprefix(prefix): size for key, size in _keys(aws, "dogclf-test", prefix).items()}


def _local_files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_the_job_sees_exactly_the_local_folder_whatever_was_uploaded_before(
    aws: Aws, tmp_path: Path, dogclf_log: list[str]
) -> None:
    six = dogclf.make_synthetic_dataset(tmp_path / "a" / "data", num_classes=6, per_split=(2, 1, 0), size=32, seed=1)
    three = dogclf.make_synthetic_dataset(tmp_path / "b" / "data", num_classes=3, per_split=(2, 1, 0), size=32, seed=2)
    spec = TrainingJobSpec(backbone="resnet18")

    first = launch_training_job(spec, six, aws=aws, role=ROLE, bucket="dogclf-test", name="six")
    second = launch_training_job(spec, three, aws=aws, role=ROLE, bucket="dogclf-test", name="three")

    assert _channel_files(aws, first.request or {}) == _local_files(six)
    assert _channel_files(aws, second.request or {}) == _local_files(three)  # 3 classes, not the union's 6
    assert len({p.split("/")[1] for p in _channel_files(aws, second.request or {}) if p.startswith("train/")}) == 3

    # The same folder edited in place (a class removed, a photo replaced) is what the next job sees.
    for split in ("train", "valid"):
        shutil.rmtree(next((three / split).iterdir()))
    photo = next((three / "train").rglob("*.jpg"))
    photo.write_bytes(photo.read_bytes() + b"\0")
    third = launch_training_job(spec, three, aws=aws, role=ROLE, bucket="dogclf-test", name="four")
    assert _channel_files(aws, third.request or {}) == _local_files(three)

    # Relaunching on unchanged photos reuses the prefix and uploads nothing.
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    again = launch_training_job(spec, three, aws=aws, role=ROLE, bucket="dogclf-test", name="again")
    assert again.request["InputDataConfig"] == third.request["InputDataConfig"]  # type: ignore[index]
    assert any(line.endswith(f"0 uploaded (0.0 MB), {len(_local_files(three))} already there") for line in lines)


def test_a_mirrored_prefix_loses_the_objects_the_folder_does_not_have(aws: Aws, tmp_path: Path) -> None:
    from dogclf.sagemaker.s3 import S3Uri, sync_folder

    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.jpg").write_bytes(b"one")
    s3 = aws.client("s3")
    for key in ("p/a/stale.jpg", "p/old-class/2.jpg", "p-sibling/keep.jpg"):
        s3.put_object(Bucket="dogclf-test", Key=key, Body=b"x")

    report = sync_folder(aws, folder, S3Uri("dogclf-test", "p"), mirror=True)

    assert (report.uploaded, report.deleted) == (1, 2)
    assert sorted(_keys(aws, "dogclf-test", "p")) == ["p-sibling/keep.jpg", "p/a/1.jpg"]
