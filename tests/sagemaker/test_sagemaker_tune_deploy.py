"""SageMaker tuning and endpoints against a moto server, and the whole path with SageMaker's part played here."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from conftest import jpeg
from serving.test_package import SERVE_SCRIPT

import dogclf
from dogclf.cli import main
from dogclf.sagemaker.aws import Aws
from dogclf.sagemaker.endpoint import delete_endpoint, deploy, invoke
from dogclf.sagemaker.local import run_request
from dogclf.sagemaker.s3 import S3Uri, download_prefix, upload_file
from dogclf.sagemaker.training_job import TrainingJobSpec, launch_training_job
from dogclf.sagemaker.tuning_job import (
    TuningError,
    describe_trials,
    launch_tuning_job,
    parameter_ranges,
    write_tuning_results,
)
from dogclf.tuning.space import DEFAULT_SPACE, SEED_INCEPTION_SPACE, SEED_RESNET18_SPACE, IntRange, SearchSpace

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


@pytest.fixture
def aws(moto_environ: dict[str, str]) -> Aws:
    context = Aws.from_environ(moto_environ)
    context.client("s3").create_bucket(Bucket="dogclf-test")
    return context


def _capture(aws: Aws, operation: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    aws.session.events.register(f"provide-client-params.sagemaker.{operation}", lambda params, **_: sent.append(params))
    return sent


def test_the_seeds_spaces_become_sagemaker_ranges() -> None:
    assert parameter_ranges(SEED_RESNET18_SPACE) == {
        "ContinuousParameterRanges": [
            {"Name": "lr", "MinValue": "0.0005", "MaxValue": "0.005", "ScalingType": "Logarithmic"}
        ],
        "CategoricalParameterRanges": [
            {"Name": "batch-size", "Values": ["16", "32", "128", "256"]},
            {"Name": "epochs", "Values": ["5", "10"]},
        ],
    }
    inception = parameter_ranges(SEED_INCEPTION_SPACE)
    assert inception["ContinuousParameterRanges"][0]["MinValue"] == "0.001"
    assert inception["CategoricalParameterRanges"][0]["Values"] == ["64", "128"]
    default = parameter_ranges(DEFAULT_SPACE)
    scaling = {r["Name"]: r["ScalingType"] for r in default["ContinuousParameterRanges"]}
    assert scaling["lr"] == "Logarithmic"
    assert all(r["ScalingType"] == "Linear" for r in default.get("IntegerParameterRanges", []))


def test_an_integer_range_with_a_step_has_no_sagemaker_form() -> None:
    with pytest.raises(TuningError, match=r"integer ranges have no step .* e\.g\. \[2, 4, 6\]"):
        parameter_ranges(SearchSpace({"epochs": IntRange(2, 6, step=2)}))


@pytest.mark.slow
def test_tuning_request_carries_the_space_the_objective_and_the_trial_template(
    aws: Aws, tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    sent = _capture(aws, "CreateHyperParameterTuningJob")
    spec = TrainingJobSpec(backbone="tinynet", hyperparameters={"weights": "none"}, spot=True, max_runtime=600)

    job = launch_tuning_job(
        spec, SEED_RESNET18_SPACE, str(tiny_tree), aws=aws, role=ROLE, bucket="dogclf-test", name="tune-a", max_jobs=6
    )

    [request] = sent
    assert request == job.request
    config = request["HyperParameterTuningJobConfig"]
    assert config["ParameterRanges"] == parameter_ranges(SEED_RESNET18_SPACE)
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid_top1"}
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    definition = request["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert static["backbone"] == "tinynet"
    assert static["weights"] == "none"
    assert not {"lr", "batch-size", "epochs"} & set(static)  # searched, so not fixed
    names = {m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]}
    assert "valid_top1" in names
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["CheckpointConfig"]["S3Uri"] == "s3://dogclf-test/dogclf/tuning/tune-a/checkpoints"
    source = json.loads(static["sagemaker_submit_directory"])
    assert aws.client("s3").head_object(Bucket="dogclf-test", Key=S3Uri.parse(source).key)["ContentLength"] > 0
    described = aws.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tune-a")
    assert described["HyperParameterTuningJobConfig"]["ParameterRanges"] == config["ParameterRanges"]


def test_a_finished_tuning_job_writes_what_dogclf_tune_writes(aws: Aws, tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)

    def summary(n: int, status: str, value: float | None, lr: str, batch: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "TrainingJobName": f"tune-a-00{n}-abcd",
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/tune-a-00{n}-abcd",
            "CreationTime": start + timedelta(minutes=n),
            "TrainingStartTime": start + timedelta(minutes=n),
            "TrainingEndTime": start + timedelta(minutes=n, seconds=90),
            "TrainingJobStatus": status,
            "TunedHyperParameters": {"lr": lr, "batch-size": batch, "epochs": '"5"'},
        }
        if value is not None:
            item["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": "valid_top1", "Value": value}
        return item

    summaries = [
        summary(1, "Completed", 0.91, "0.0006684340499967713", '"16"'),
        summary(2, "Completed", 0.94, "0.0038297311117915494", '"128"'),
        summary(3, "Stopped", None, "0.004", '"256"'),
    ]
    with Stubber(aws.client("sagemaker")) as stub:
        stub.add_response(
            "list_training_jobs_for_hyper_parameter_tuning_job",
            {"TrainingJobSummaries": summaries},
            {"HyperParameterTuningJobName": "tune-a"},
        )
        records = describe_trials(aws, "tune-a", SEED_RESNET18_SPACE)

    assert [(r.state, r.value) for r in records] == [("COMPLETE", 0.91), ("COMPLETE", 0.94), ("PRUNED", None)]
    assert records[0].params == {"lr": 0.0006684340499967713, "batch_size": 16, "epochs": 5}
    assert records[1].seconds == 90
    best, trials, history = write_tuning_results(
        tmp_path, records, space=SEED_RESNET18_SPACE, metric="valid_top1", job_name="tune-a", backbone="resnet18"
    )
    payload = json.loads(best.read_text())
    assert payload["params"] == {"lr": 0.0038297311117915494, "batch_size": 128, "epochs": 5}
    assert payload["value"] == 0.94
    assert payload["hyperparameters"]["weight_decay"] == 0.0  # what the space leaves out keeps its default
    assert trials.read_text().splitlines()[0].startswith("number,state,value,seconds")
    assert history.stat().st_size > 1000


def _plugin_model(tmp_path: Path) -> Path:
    """A trained model directory on the tiny plugin backbone (needs the ``tiny_plugin`` fixture)."""
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=3, per_split=(6, 2, 2), size=40, seed=3)
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")
    dogclf.train(data, "tinynet", tmp_path / "model", config=config, weights=None, cache=False)
    return tmp_path / "model"


def test_deploy_creates_model_config_and_endpoint_and_delete_removes_all_three(
    aws: Aws, tiny_plugin: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    models, configs = _capture(aws, "CreateModel"), _capture(aws, "CreateEndpointConfig")
    model_dir = _plugin_model(tmp_path)

    endpoint = deploy(model_dir, aws=aws, role=ROLE, bucket="dogclf-test", endpoint_name="dog-ep", top_k=3)

    [model], [config] = models, configs
    container = model["PrimaryContainer"]
    assert container["Image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"
    assert container["ModelDataUrl"] == "s3://dogclf-test/dogclf/models/dog-ep/model.tar.gz" == endpoint.model_data
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["DOGCLF_TOP_K"] == "3"
    assert config["ProductionVariants"] == [
        {"VariantName": "AllTraffic", "ModelName": "dog-ep", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
    ]
    body = aws.client("s3").get_object(Bucket="dogclf-test", Key="dogclf/models/dog-ep/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert {"config.json", "model.safetensors", "code/inference.py", "code/dogclf_tinybb.py"} <= set(tar.getnames())
    client = aws.client("sagemaker")
    assert client.describe_endpoint(EndpointName="dog-ep")["EndpointStatus"] == "InService"

    deleted = delete_endpoint(aws, "dog-ep")

    assert deleted == ["endpoint dog-ep", "endpoint config dog-ep", "model dog-ep"]
    for call, key in (("describe_endpoint", "EndpointName"), ("describe_endpoint_config", "EndpointConfigName")):
        with pytest.raises(client.exceptions.ClientError):
            getattr(client, call)(**{key: "dog-ep"})
    with pytest.raises(client.exceptions.ClientError):
        client.describe_model(ModelName="dog-ep")


def test_serverless_deploy_and_bad_sizes(aws: Aws) -> None:
    configs = _capture(aws, "CreateEndpointConfig")
    deploy("s3://dogclf-test/job/output/model.tar.gz", aws=aws, role=ROLE, serverless_memory=4096)
    [config] = configs
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    from dogclf.sagemaker.endpoint import EndpointError

    with pytest.raises(EndpointError, match="--serverless takes the memory in MB, one of 1024, 2048"):
        deploy("s3://dogclf-test/m.tar.gz", aws=aws, role=ROLE, serverless_memory=1000)


def test_invoke_sends_the_jpeg_bytes_and_prints_what_predict_prints(
    aws: Aws, tiny_plugin: dogclf.BackboneSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dogclf.serving import handlers
    from dogclf.serving.answers import print_predictions

    model_dir = _plugin_model(tmp_path)
    capsys.readouterr()  # training's epoch line
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(7, size=(90, 70)))
    model = handlers.model_fn(str(model_dir))
    answer = handlers.output_fn(
        handlers.predict_fn(handlers.input_fn(photo.read_bytes(), "image/jpeg"), model), "application/json"
    )
    body = answer[0] if isinstance(answer, tuple) else answer
    runtime = aws.client("sagemaker-runtime")
    with Stubber(runtime) as stub:
        expected = {"EndpointName": "dog-ep", "ContentType": "image/jpeg", "Accept": "application/json"}
        stub.add_response(
            "invoke_endpoint",
            {"Body": io.BytesIO(body.encode() if isinstance(body, str) else body), "ContentType": "application/json"},
            {**expected, "Body": photo.read_bytes()},
        )
        results = invoke(aws, "dog-ep", [photo])
    print_predictions(results, as_json=False)
    invoked = capsys.readouterr().out

    assert main(["predict", "--model", str(model_dir), str(photo)]) == 0
    assert invoked == capsys.readouterr().out


@pytest.mark.slow
def test_the_whole_path_with_sagemaker_played_here(
    aws: Aws, moto_environ: dict[str, str], tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    # 1. Launch to "SageMaker" (moto records the job; it runs nothing).
    spec = TrainingJobSpec(
        backbone="tinynet", hyperparameters={"epochs": "2", "batch-size": "8", "weights": "none", "workers": "0"}
    )
    launch_training_job(spec, tiny_tree, aws=aws, role=ROLE, bucket="dogclf-test", name="e2e-job")
    recorded = aws.client("sagemaker").describe_training_job(TrainingJobName="e2e-job")

    # 2. Play the platform: copy the channels from S3, run the recorded job through the real toolkit (which fetches
    #    the source directory from S3 itself), and upload the model where the job's output path says.
    channels = {
        c["ChannelName"]: download_prefix(
            aws, S3Uri.parse(c["DataSource"]["S3DataSource"]["S3Uri"]), tmp_path / "channels" / c["ChannelName"]
        )
        for c in recorded["InputDataConfig"]
    }
    environ = {k: v for k, v in moto_environ.items() if k not in ("PYTHONPATH", "DOGCLF_FEATURE_CACHE")}
    result = run_request(recorded, tmp_path / "job", channels=channels, environ=environ)
    artifact = S3Uri.parse(recorded["ModelArtifacts"]["S3ModelArtifacts"])
    assert str(artifact) == "s3://dogclf-test/dogclf/jobs/e2e-job/output/model.tar.gz"
    upload_file(aws, result.model_tar, artifact)

    # 3. Deploy that artifact as it is, and answer a JPEG through the packaged handlers, with nothing but its code/.
    endpoint = deploy(str(artifact), aws=aws, role=ROLE, endpoint_name="e2e-ep")
    assert endpoint.requests[0]["PrimaryContainer"]["ModelDataUrl"] == str(artifact)
    served = tmp_path / "served"
    download_prefix(aws, S3Uri(artifact.bucket, artifact.key.rsplit("/", 1)[0]), tmp_path / "artifact")
    with tarfile.open(tmp_path / "artifact" / "model.tar.gz") as tar:
        tar.extractall(served, filter="data")
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(11, size=(90, 70)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAGEMAKER_PROGRAM")}
    env |= {"PYTHONPATH": str(served / "code"), "SAGEMAKER_PROGRAM": "inference.py", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(served), str(photo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["dogclf"]) == served / "code" / "dogclf" / "__init__.py"
    ok = report["answers"][0]
    assert ok["status"] == 200
    answer = json.loads(ok["body"])
    reference = dogclf.load_model(served).classify(photo.read_bytes())[0].to_dict()
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in reference["predictions"]]

    # 4. Delete: nothing is left billing.
    assert delete_endpoint(aws, "e2e-ep") == [
        "endpoint e2e-ep",
        "endpoint config e2e-ep",
        "model e2e-ep",
    ]


@pytest.mark.slow
def test_tune_local_runs_the_trials_through_the_toolkit_and_trains_the_best(
    tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"batch_size": {"type": "categorical", "choices": [4, 8]}}), encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOGCLF_FEATURE_CACHE")}
    environ["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "tune"
    args = ["sagemaker", "tune", "--local", "--data", str(tiny_tree), "--backbone", "tinynet", "--weights", "none"]
    args += ["--epochs", "2", "--workers", "0", "--space", str(space), "--max-jobs", "2", "--out", str(out)]

    assert main([*args, "--train-best"], environ=environ) == 0

    printed = capsys.readouterr().out
    assert "2 trials, " in printed
    request = json.loads((out / "tuning-request.json").read_text())
    assert request["HyperParameterTuningJobConfig"]["ParameterRanges"] == {
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["4", "8"]}]
    }
    best = json.loads((out / "best_params.json").read_text())
    assert best["params"]["batch_size"] in (4, 8)
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 2
    # Each trial got its categorical value as SageMaker hands it over (JSON-quoted) and trained with it.
    for trial in trials:
        assert re.search(r"^dogclf train .* --batch-size [48]( |$)", (trial / "log.txt").read_text(), re.M)
    with tarfile.open(out / "best" / "model.tar.gz") as tar:
        model = json.loads(tar.extractfile("config.json").read())  # type: ignore[union-attr]
    assert model["training"]["batch_size"] == best["params"]["batch_size"]
    assert model["training"]["epochs"] == 2
