"""What a user sees when AWS answers something other than success: delete that cannot look, bad downloads."""

from __future__ import annotations

import socket
import tarfile
from pathlib import Path

import pytest
from botocore.stub import Stubber

from dogclf.cli import main
from dogclf.sagemaker.aws import Aws, AwsError
from dogclf.sagemaker.endpoint import EndpointError, delete_endpoint

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")


@pytest.fixture
def aws(moto_environ: dict[str, str]) -> Aws:
    return Aws.from_environ(moto_environ)


@pytest.mark.parametrize(
    ("code", "message", "shown"),
    [
        ("UnrecognizedClientException", "The security token included in the request is invalid.", "expired or invalid"),
        ("AccessDeniedException", "User: x is not authorized to perform: sagemaker:DescribeEndpoint", "iam:PassRole"),
        ("ThrottlingException", "Rate exceeded", "Rate exceeded"),
    ],
)
def test_delete_that_could_not_look_says_why_instead_of_no_endpoint(
    aws: Aws, code: str, message: str, shown: str
) -> None:
    with Stubber(aws.client("sagemaker")) as stub:
        stub.add_client_error("describe_endpoint", code, message, expected_params={"EndpointName": "live-ep"})
        with pytest.raises(AwsError) as info:
            delete_endpoint(aws, "live-ep")
    text = str(info.value)
    assert text.startswith(f"Reading endpoint live-ep: DescribeEndpoint failed ({code})")
    assert shown in text
    assert "There is no endpoint" not in text


def test_only_aws_saying_could_not_find_means_there_is_no_endpoint(aws: Aws) -> None:
    with pytest.raises(EndpointError, match="There is no endpoint, endpoint config or model named 'gone'"):
        delete_endpoint(aws, "gone")  # moto answers as SageMaker does: "Could not find ..."


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_delete_without_network_is_one_clear_line(
    moto_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own setting: no retries against the closed port
    environ = {**moto_environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}"}
    code = main(["sagemaker", "delete", "some-ep"], environ=environ)
    out, err = capsys.readouterr()
    assert code == 2
    assert "Reading endpoint some-ep: cannot reach AWS (Could not connect to the endpoint URL" in err
    assert "Traceback" not in err
    assert "There is no endpoint" not in out + err


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model.tar.gz of a tiny trained model, config.json first (as a job's archive lists it)."""
    from conftest import train_tiny_model

    root = tmp_path_factory.mktemp("model")
    _, model = train_tiny_model(root, per_split=(5, 1, 1))
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model.rglob("*"), key=lambda p: (p.name != "config.json", p.as_posix())):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(model).as_posix())
    return archive


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_a_bad_archive_is_one_clear_error_and_leaves_nothing_that_blocks_the_retry(
    damage: str, model_tar: Path, tmp_path: Path
) -> None:
    from dogclf.errors import ModelDirError
    from dogclf.sagemaker.training_job import unpack_model

    bad = tmp_path / "model.tar.gz"
    whole = model_tar.read_bytes()
    bad.write_bytes(b"<Error><Code>AccessDenied</Code></Error>" if damage == "not gzip" else whole[: len(whole) // 2])
    out = tmp_path / "models" / "job-a"

    with pytest.raises(ModelDirError, match=r"model.tar.gz is not a readable model.tar.gz \("):
        unpack_model(bad, out)

    assert not out.exists()
    assert _leftovers(out.parent) == []
    unpack_model(model_tar, out)  # the retry needs no --overwrite
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def test_overwrite_swaps_the_whole_model_and_a_failed_one_keeps_the_old(model_tar: Path, tmp_path: Path) -> None:
    from dogclf.errors import ModelDirError
    from dogclf.sagemaker.training_job import unpack_model

    out = unpack_model(model_tar, tmp_path / "m")
    (out / "stale.txt").write_text("from an older model", encoding="utf-8")
    before = (out / "config.json").read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(model_tar.read_bytes()[:100])

    with pytest.raises(ModelDirError):
        unpack_model(bad, out, overwrite=True)
    assert (out / "config.json").read_bytes() == before  # the old model is untouched
    with pytest.raises(ModelDirError, match="already holds a model; pass --overwrite"):
        unpack_model(model_tar, out)

    unpack_model(model_tar, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert _leftovers(tmp_path) == []


def test_a_folder_of_other_files_is_never_replaced(
    model_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dogclf.errors import ModelDirError
    from dogclf.sagemaker.training_job import unpack_model

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("mine", encoding="utf-8")
    monkeypatch.chdir(project / "src")
    for out in (project, Path("..")):
        with pytest.raises(ModelDirError, match="is not empty and holds no dogclf model"):
            unpack_model(model_tar, out, overwrite=True)
    assert (project / "notes.txt").read_text(encoding="utf-8") == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (unpack_model(model_tar, empty) / "config.json").is_file()  # an empty folder is fine


def test_download_of_a_damaged_artifact_through_the_cli(
    aws: Aws, moto_environ: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.client("s3").create_bucket(Bucket="dogclf-test")
    aws.client("sagemaker").create_training_job(
        TrainingJobName="job-bad",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/SageMakerExecutionRole",
        OutputDataConfig={"S3OutputPath": "s3://dogclf-test/dogclf/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    key = "dogclf/jobs/job-bad/output/model.tar.gz"
    aws.client("s3").put_object(Bucket="dogclf-test", Key=key, Body=b"\x1f\x8b\x08\x00 truncated gzip")
    out = tmp_path / "models" / "job-bad"

    code = main(["sagemaker", "download", "job-bad", "--out", str(out)], environ=moto_environ)

    err = capsys.readouterr().err
    assert code == 2
    assert "s3://dogclf-test/dogclf/jobs/job-bad/output/model.tar.gz is not a readable model.tar.gz (" in err
    assert "Traceback" not in err
    assert not out.exists()
