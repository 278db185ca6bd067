"""What a user sees when AWS answers something other than success: delete that cannot look, bad downloads."""

from __future__ import annotations

import socket

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
            delete_endpoint(aws, "live-ep", log=lambda _: None)
    text = str(info.value)
    assert text.startswith(f"Reading endpoint live-ep: DescribeEndpoint failed ({code})")
    assert shown in text
    assert "There is no endpoint" not in text


def test_only_aws_saying_could_not_find_means_there_is_no_endpoint(aws: Aws) -> None:
    with pytest.raises(EndpointError, match="There is no endpoint, endpoint config or model named 'gone'"):
        delete_endpoint(aws, "gone", log=lambda _: None)  # moto answers as SageMaker does: "Could not find ..."


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
