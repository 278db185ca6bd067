"""Past one endpoint instance: deploy --instance-count, update without downtime (Stubber: moto has no
UpdateEndpoint), target-tracking autoscaling and batch transform (moto server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.stub import Stubber
from conftest import jpeg, run_cli
from PIL import Image

from dogclf.artifact import save_model
from dogclf.classifier import load_model
from dogclf.data.folder import ClassInfo
from dogclf.model import HeadConfig, build_model
from dogclf.sagemaker.aws import Aws
from dogclf.sagemaker.endpoint import EndpointError, deploy
from dogclf.sagemaker.scaling import update_endpoint

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
ARCHIVE = "s3://dogclf-test/dogclf/jobs/j/output/model.tar.gz"
NOW = datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc)


@pytest.fixture
def aws(moto_aws: Aws) -> Aws:
    return moto_aws


def _cli(args: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(args, capsys, environ)


def _configs(aws: Aws) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    aws.session.events.register(
        "provide-client-params.sagemaker.CreateEndpointConfig", lambda params, **_: sent.append(params)
    )
    return sent


def test_deploy_instance_count_puts_that_many_instances_behind_the_endpoint(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sagemaker", "deploy", ARCHIVE, "--instance-count", "3", "--endpoint-name", "ep3", "--role", ROLE]
    code, out, err = _cli(args, moto_environ, capsys)
    assert code == 0, err
    config = aws.client("sagemaker").describe_endpoint_config(EndpointConfigName="ep3")
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 3
    assert "(3 x ml.m5.large)" in out
    with pytest.raises(EndpointError, match="applies to instance endpoints only"):
        deploy(ARCHIVE, aws=aws, role=ROLE, serverless_memory=2048, instance_count=2)


def _endpoint(config: str, status: str = "InService", count: int = 2, **more: Any) -> dict[str, Any]:
    return {
        "EndpointName": "live",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/live",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": count}],
        **more,
    }


def _old_config() -> dict[str, Any]:
    variant = {"VariantName": "AllTraffic", "ModelName": "live-model-1", "InitialInstanceCount": 1}
    return {
        "EndpointConfigName": "live-config-1",
        "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/live-config-1",
        "ProductionVariants": [variant | {"InstanceType": "ml.m5.large"}],
        "CreationTime": NOW,
    }


def _update_stub(stub: Stubber, *, now_serving: str) -> None:
    stub.add_response("describe_endpoint", _endpoint("live-config-1"), {"EndpointName": "live"})
    stub.add_response("describe_endpoint_config", _old_config(), {"EndpointConfigName": "live-config-1"})
    arn = "arn:aws:sagemaker:us-east-1:123456789012:"
    stub.add_response("create_model", {"ModelArn": f"{arn}model/live-2"})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{arn}endpoint-config/live-2"})
    stub.add_response("update_endpoint", {"EndpointArn": f"{arn}endpoint/live"})
    failure = {} if now_serving == "live-2" else {"FailureReason": "the new instances failed their health check"}
    for _ in range(2):  # the waiter's poll, then the check of which config serves
        stub.add_response("describe_endpoint", _endpoint(now_serving, **failure), {"EndpointName": "live"})


def test_update_switches_an_endpoint_to_a_new_model_blue_green_and_cleans_up(aws: Aws) -> None:
    sent: dict[str, dict[str, Any]] = {}
    for operation in ("CreateModel", "CreateEndpointConfig", "UpdateEndpoint"):
        aws.session.events.register(
            f"provide-client-params.sagemaker.{operation}", lambda params, op=operation, **_: sent.update({op: params})
        )
    with Stubber(aws.client("sagemaker")) as stub:
        _update_stub(stub, now_serving="live-2")
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "live-config-1"})
        stub.add_response("delete_model", {}, {"ModelName": "live-model-1"})
        done = update_endpoint(ARCHIVE, aws=aws, endpoint="live", role=ROLE, name="live-2", top_k=3)
        stub.assert_no_pending_responses()

    assert sent["UpdateEndpoint"] == {
        "EndpointName": "live",
        "EndpointConfigName": "live-2",
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
            }
        },
    }
    [variant] = sent["CreateEndpointConfig"]["ProductionVariants"]
    # the same variant and instance type, and the instance count running now (2, not the config's initial 1)
    assert variant == {
        "VariantName": "AllTraffic",
        "ModelName": "live-2",
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 2,
    }
    assert sent["CreateModel"]["PrimaryContainer"]["ModelDataUrl"] == ARCHIVE
    assert sent["CreateModel"]["PrimaryContainer"]["Environment"]["DOGCLF_TOP_K"] == "3"
    assert done.deleted == ("endpoint config live-config-1", "model live-model-1")


def test_a_rolled_back_update_says_so_and_keeps_the_old_model(aws: Aws) -> None:
    with Stubber(aws.client("sagemaker")) as stub:
        _update_stub(stub, now_serving="live-config-1")
        with pytest.raises(EndpointError) as info:
            update_endpoint(ARCHIVE, aws=aws, endpoint="live", role=ROLE, name="live-2")
        stub.assert_no_pending_responses()  # nothing was deleted
    assert "was rolled back; it still serves live-config-1: the new instances failed their health check" in str(
        info.value
    )


def test_autoscale_registers_target_tracking_and_off_removes_it(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy(ARCHIVE, aws=aws, role=ROLE, endpoint_name="busy")
    code, out, err = _cli(
        ["sagemaker", "autoscale", "busy", "--min", "2", "--max", "6", "--target", "120"], moto_environ, capsys
    )
    assert code == 0, err
    scaling = aws.client("application-autoscaling")
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["ScalableDimension"]) == (
        "endpoint/busy/variant/AllTraffic",
        "sagemaker:variant:DesiredInstanceCount",
    )
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 120.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }
    assert "scales between 2 and 6 instances" in out

    # An autoscaled variant's instance type cannot change in an update (AWS refuses it): said before anything is made.
    with pytest.raises(EndpointError, match="autoscale busy --off"):
        update_endpoint(ARCHIVE, aws=aws, endpoint="busy", role=ROLE, instance_type="ml.c5.xlarge")

    code, out, err = _cli(["sagemaker", "autoscale", "busy", "--off"], moto_environ, capsys)
    assert code == 0, err
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []

    deploy(ARCHIVE, aws=aws, role=ROLE, endpoint_name="nimble", serverless_memory=2048)
    code, _, err = _cli(["sagemaker", "autoscale", "nimble", "--max", "3"], moto_environ, capsys)
    assert code == 2
    assert "is serverless: it scales by itself" in err


@pytest.fixture
def model_dir(tmp_path: Path, tiny_spec: Any) -> Path:
    torch.manual_seed(0)
    net = build_model(tiny_spec, 4, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(30)
    classes = [ClassInfo(folder=f"{i:03d}.Breed_{i}", name=f"Breed {i}") for i in range(4)]
    return save_model(net.eval(), tmp_path / "model", spec=tiny_spec, classes=classes, head=HeadConfig().to_dict())


def webp(seed: int) -> bytes:
    """The bytes of :func:`jpeg`'s picture as WebP."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).save(buffer, format="WEBP")
    return buffer.getvalue()


def _photos(aws: Aws, folder: str) -> dict[str, bytes]:
    """Four photos and a text file under ``s3://dogclf-test/<folder>/`` (moto's state outlives one server)."""
    photos = {"a.jpg": jpeg(1), "park/b.jpeg": jpeg(2, size=(64, 96)), "park/c.png": jpeg(3), "park/d.webp": webp(4)}
    s3 = aws.client("s3")
    for key, body in photos.items():
        s3.put_object(Bucket="dogclf-test", Key=f"{folder}/{key}", Body=body)
    s3.put_object(Bucket="dogclf-test", Key=f"{folder}/README.txt", Body=b"not a photo")
    return photos


def test_transform_local_scores_every_photo_through_the_handlers(
    aws: Aws, model_dir: Path, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(aws, "photos")
    args = ["sagemaker", "transform", "--local", "--model", str(model_dir), "--top-k", "2"]
    code, out, err = _cli(
        [*args, "--input", "s3://dogclf-test/photos/", "--output", "s3://dogclf-test/answers"], moto_environ, capsys
    )
    assert code == 0, err
    assert "Wrote 4 answers to s3://dogclf-test/answers/" in out
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket="dogclf-test", Prefix="answers/")["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(f"answers/{key}.out" for key in photos)
    reference = load_model(model_dir)
    for key, body in photos.items():
        answer = json.loads(s3.get_object(Bucket="dogclf-test", Key=f"answers/{key}.out")["Body"].read())
        wanted = reference.classify([body], top_k=2)[0].to_dict()
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in wanted["predictions"]]
        assert [p["score"] for p in answer["predictions"]] == pytest.approx([p["score"] for p in wanted["predictions"]])

    s3.put_object(Bucket="dogclf-test", Key="photos/broken.jpg", Body=b"\xff\xd8 cut short")
    code, _, err = _cli(
        [*args, "--input", "s3://dogclf-test/photos/", "--output", "s3://dogclf-test/again"], moto_environ, capsys
    )
    assert code == 2
    assert "1 of 5 photos failed" in err
    assert "broken.jpg: 400" in err
    assert len(s3.list_objects_v2(Bucket="dogclf-test", Prefix="again/")["Contents"]) == 4


def test_transform_launches_a_job_over_a_manifest_of_the_photos(
    aws: Aws, moto_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(aws, "batch")
    args = ["sagemaker", "transform", "--model", ARCHIVE, "--input", "s3://dogclf-test/batch", "--output"]
    args += ["s3://dogclf-test/answers/", "--instance-count", "2", "--job-name", "score-all", "--bucket", "dogclf-test"]
    code, _, err = _cli([*args, "--role", ROLE], moto_environ, capsys)
    assert code == 0, err
    client = aws.client("sagemaker")
    job = client.describe_transform_job(TransformJobName="score-all")
    assert job["ModelName"] == "score-all"
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "ManifestFile",
        "S3Uri": "s3://dogclf-test/dogclf/transform/score-all/input.manifest",
    }
    assert job["TransformOutput"]["S3OutputPath"] == "s3://dogclf-test/answers"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 2}
    model = client.describe_model(ModelName="score-all")
    assert model["PrimaryContainer"]["ModelDataUrl"] == ARCHIVE
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    manifest = aws.client("s3").get_object(Bucket="dogclf-test", Key="dogclf/transform/score-all/input.manifest")
    assert json.loads(manifest["Body"].read()) == [{"prefix": "s3://dogclf-test/batch/"}, *sorted(photos)]
