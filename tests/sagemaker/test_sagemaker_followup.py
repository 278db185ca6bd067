"""``dogclf sagemaker status|logs|wait|stop JOB`` and the Python handles, against a moto server (Stubber where moto
lacks an operation: StopTrainingJob, StopHyperParameterTuningJob, ListTrainingJobsForHyperParameterTuningJob)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from conftest import run_cli

from dogclf.sagemaker.aws import Aws
from dogclf.sagemaker.training_job import TrainingJob, TrainingJobSpec, launch_training_job
from dogclf.sagemaker.tuning_job import TuningJob, launch_tuning_job
from dogclf.tuning.space import SEED_RESNET18_SPACE

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
DATA = "s3://dogclf-test/photos/"
GROUP = "/aws/sagemaker/TrainingJobs"


@pytest.fixture
def aws(moto_aws: Aws, moto_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Aws:
    for key, value in moto_environ.items():  # the Python API reads os.environ when no context is given
        monkeypatch.setenv(key, value)
    return moto_aws


def _cli(args: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(args, capsys, environ)


def _put_logs(aws: Aws, job: str, lines: list[str]) -> None:
    logs = aws.client("logs")
    if not logs.describe_log_groups(logGroupNamePrefix=GROUP)["logGroups"]:  # moto may have made it
        logs.create_log_group(logGroupName=GROUP)
    logs.create_log_stream(logGroupName=GROUP, logStreamName=f"{job}/algo-1-1700000000")
    now = int(time.time() * 1000)
    events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
    logs.put_log_events(logGroupName=GROUP, logStreamName=f"{job}/algo-1-1700000000", logEvents=events)


def _launch(aws: Aws, name: str) -> TrainingJob:
    spec = TrainingJobSpec(backbone="resnet18", hyperparameters={"epochs": "2"}, spot=True, instance_count=2)
    return launch_training_job(spec, DATA, aws=aws, role=ROLE, bucket="dogclf-test", name=name)


def test_the_launch_hint_names_the_followup_commands_and_they_find_the_job_by_name(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["sagemaker", "train", "--data", DATA, "--backbone", "resnet18", "--role", ROLE, "--bucket", "dogclf-test"]
    code, out, err = _cli([*base, "--job-name", "job-hint", "--epochs", "1"], moto_environ, capsys)
    assert code == 0, err
    assert "--wait" not in out  # rerunning the launch with --wait would start a second job
    assert "dogclf sagemaker logs job-hint --follow" in out
    assert "dogclf sagemaker download job-hint --out models/job-hint" in out

    _put_logs(aws, "job-hint", ["dogclf train --data /opt/ml/input/data/training", "epoch=1 valid_top1=0.5000"])
    code, out, err = _cli(["sagemaker", "logs", "job-hint"], moto_environ, capsys)
    assert code == 0, err
    assert out.splitlines() == ["dogclf train --data /opt/ml/input/data/training", "epoch=1 valid_top1=0.5000"]

    code, out, err = _cli(["sagemaker", "status", "job-hint"], moto_environ, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Training job job-hint: Completed"  # moto completes jobs at once
    assert "  instances: 1 x ml.m5.large" in lines
    assert "  model: s3://dogclf-test/dogclf/jobs/job-hint/output/model.tar.gz" in lines
    code, out, _ = _cli(["sagemaker", "status", "job-hint", "--json"], moto_environ, capsys)
    assert json.loads(out)["TrainingJobName"] == "job-hint"

    code, out, err = _cli(["sagemaker", "wait", "job-hint", "--poll", "0"], moto_environ, capsys)
    assert code == 0, err
    assert "epoch=1 valid_top1=0.5000" in out
    assert "[job-hint] Completed; model: s3://dogclf-test/dogclf/jobs/job-hint/output/model.tar.gz" in out

    code, out, err = _cli(["sagemaker", "stop", "job-hint"], moto_environ, capsys)
    assert (code, out.strip()) == (0, "Training job job-hint is already Completed: nothing to stop.")


def test_an_unknown_name_is_one_clear_line(moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("status", "logs", "wait", "stop"):
        code, _, err = _cli(["sagemaker", command, "no-such-job"], moto_environ, capsys)
        assert code == 2
        assert "There is no training job and no tuning job named 'no-such-job' in us-east-1" in err
        assert "Traceback" not in err


def _described(status: str, **more: Any) -> dict[str, Any]:
    return {
        "TrainingJobName": "job-run",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-run",
        "TrainingJobStatus": status,
        "SecondaryStatus": "Training" if status == "InProgress" else status,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc),
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/p/jobs/job-run/output/model.tar.gz"},
        **more,
    }


def test_stop_a_running_training_job_and_status_shows_metrics_and_billable_time(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    job = TrainingJob("job-run", aws)
    with Stubber(aws.client("sagemaker")) as stub:  # moto has no StopTrainingJob
        stub.add_response("describe_training_job", _described("InProgress"), {"TrainingJobName": "job-run"})
        stub.add_response("stop_training_job", {}, {"TrainingJobName": "job-run"})
        assert job.stop() is True
        stub.assert_no_pending_responses()

    from dogclf.sagemaker.followup import training_status_lines

    stopped = _described(
        "Stopped",
        EnableManagedSpotTraining=True,
        TrainingTimeInSeconds=100,
        BillableTimeInSeconds=40,
        FinalMetricDataList=[{"MetricName": "valid_top1", "Value": 0.8125, "Timestamp": 0}],
    )
    lines = training_status_lines(stopped)
    assert lines[0] == "Training job job-run: Stopped"
    assert "  instances: 2 x ml.g5.xlarge, managed spot" in lines
    assert "  final metrics: valid_top1=0.8125" in lines
    assert any(
        line.startswith("  billable 40 s x 2 instance(s) (training 100 s; managed spot saved 60%)") for line in lines
    )
    assert not any("model:" in line for line in lines)  # a stopped job's artifact is not offered


def test_tuning_jobs_attach_show_their_best_trial_and_stop(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = TrainingJobSpec(backbone="resnet18", hyperparameters={"epochs": "2"})
    launch_tuning_job(spec, SEED_RESNET18_SPACE, DATA, aws=aws, role=ROLE, bucket="dogclf-test", name="tune-a")
    _launch(aws, "FakeTrainingJobName")  # moto's canned best trial, made to exist
    _put_logs(aws, "FakeTrainingJobName", ["epoch=2 valid_top1=0.9100"])

    tuning = TuningJob.attach("tune-a")  # from the environment, as a script would
    assert tuning.space == SEED_RESNET18_SPACE  # read back from the job's ranges
    assert tuning.training_request["HyperParameters"]["backbone"] == "resnet18"
    best = tuning.best_training_job()
    assert isinstance(best, TrainingJob)
    assert best.name == "FakeTrainingJobName"
    assert best.logs() == ["epoch=2 valid_top1=0.9100"]
    session = boto3.Session(region_name="us-east-1")  # an existing boto3 session works too
    assert TrainingJob.attach("FakeTrainingJobName", session).status == "Completed"

    code, out, err = _cli(["sagemaker", "status", "tune-a"], moto_environ, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Tuning job tune-a: Completed"
    assert lines[1] == "  Bayesian search of valid_top1 (Maximize); 20 trials, 2 at a time"
    assert any(line.startswith("  best trial: FakeTrainingJobName") for line in lines)
    code, out, err = _cli(["sagemaker", "logs", "tune-a"], moto_environ, capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == "epoch=2 valid_top1=0.9100"

    running = tuning.describe() | {"HyperParameterTuningJobStatus": "InProgress"}
    with Stubber(tuning.aws.client("sagemaker")) as stub:  # moto has no StopHyperParameterTuningJob
        stub.add_response("describe_hyper_parameter_tuning_job", running, {"HyperParameterTuningJobName": "tune-a"})
        stub.add_response("stop_hyper_parameter_tuning_job", {}, {"HyperParameterTuningJobName": "tune-a"})
        assert tuning.stop() is True
        stub.assert_no_pending_responses()


def test_tune_hint_and_wait_out_write_the_results_of_an_earlier_launch(
    aws: Aws,
    moto_environ: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["sagemaker", "tune", "--data", DATA, "--backbone", "resnet18", "--role", ROLE, "--bucket", "dogclf-test"]
    code, out, err = _cli([*base, "--space", "seed-resnet18", "--job-name", "tune-b"], moto_environ, capsys)
    assert code == 0, err
    assert "rerun" not in out
    assert "dogclf sagemaker wait tune-b --out DIR" in out

    described = aws.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tune-b")
    described.pop("ResponseMetadata")
    started = datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc)

    def trial(n: int, value: float, lr: str, batch: str) -> dict[str, Any]:
        return {
            "TrainingJobName": f"tune-b-00{n}",
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/tune-b-00{n}",
            "CreationTime": started,
            "TrainingStartTime": started,
            "TrainingEndTime": started.replace(minute=5),
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"lr": lr, "batch-size": batch, "epochs": '"5"'},
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_top1", "Value": value},
        }

    trials = [trial(1, 0.81, "0.001", '"16"'), trial(2, 0.86, "0.002", '"32"')]
    missing = {"TrainingJobName": "tune-b"}
    monkeypatch.setattr("dogclf.sagemaker.followup._aws", lambda args, environ: aws)  # the stubbed client
    with Stubber(aws.client("sagemaker")) as stub:  # moto has no ListTrainingJobsForHyperParameterTuningJob
        stub.add_client_error("describe_training_job", "ValidationException", "Could not find job", 400, None, missing)
        for _ in range(3):  # looked up, attached, waited on
            stub.add_response("describe_hyper_parameter_tuning_job", described)
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": trials})
        code, out, err = _cli(
            ["sagemaker", "wait", "tune-b", "--poll", "0", "--out", str(tmp_path)], moto_environ, capsys
        )
    assert code == 0, err
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["params"] == {"lr": 0.002, "batch_size": 32, "epochs": 5}
    assert best["tuning_job"] == "tune-b"
    assert (tmp_path / "trials.csv").read_text().count("\n") == 3


def test_sagemaker_saying_requested_resource_not_found_means_no_such_job(aws: Aws) -> None:
    from dogclf.sagemaker.followup import JobNotFoundError, find_job

    missing = "ValidationException", "Requested resource not found."  # what real SageMaker answers (moto differs)
    with Stubber(aws.client("sagemaker")) as stub:
        stub.add_client_error("describe_training_job", *missing, expected_params={"TrainingJobName": "gone"})
        stub.add_client_error(
            "describe_hyper_parameter_tuning_job", *missing, expected_params={"HyperParameterTuningJobName": "gone"}
        )
        with pytest.raises(JobNotFoundError, match="There is no training job and no tuning job named 'gone'"):
            find_job(aws, "gone")
