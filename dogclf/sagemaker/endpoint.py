"""Deploying a model to a SageMaker endpoint, querying it with image bytes, and removing everything it created.

:func:`deploy` takes a model directory (packaged with ``dogclf package`` and uploaded) or a training job's
``s3://.../model.tar.gz`` (deployable as it is: the entry point writes ``code/`` into it), and creates the three
resources an endpoint needs: a Model (the AWS PyTorch inference image, the archive, ``SAGEMAKER_PROGRAM`` =
``inference.py``), an EndpointConfig (one ``ml.*`` instance, or serverless with a memory size) and the Endpoint.
:func:`invoke` sends a photo's bytes with its image content type, as the seeds did, and reads the JSON answer of
:mod:`dogclf.serving.handlers`. :func:`delete_endpoint` removes the endpoint, its config and its model, so nothing
is left billing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.data.images import IMAGE_MEDIA_TYPES
from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws

__all__ = [
    "DeployedEndpoint",
    "EndpointError",
    "delete_endpoint",
    "deploy",
    "invoke",
    "model_data_uri",
    "model_request",
    "resource_name",
]

logger = logging.getLogger(__name__)

_SERVERLESS_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)


class EndpointError(DogclfError, RuntimeError):
    """An endpoint that could not be created, reached or removed."""


@dataclass(frozen=True)
class DeployedEndpoint:
    """What :func:`deploy` created.

    Attributes:
        name: The endpoint's name (its config and model have the same name).
        model_data: The ``model.tar.gz`` it serves.
        image: The inference image.
        requests: The CreateModel, CreateEndpointConfig and CreateEndpoint requests, in order.
    """

    name: str
    model_data: str
    image: str
    requests: tuple[dict[str, Any], ...]


def resource_name(stem: str, *, now: datetime | None = None) -> str:
    """A unique endpoint/model name: ``<stem>-<UTC time>-<random>`` (at most 63 characters, SageMaker's limit)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    clean = "".join(c if c.isalnum() else "-" for c in stem).strip("-")[: 63 - len(stamp) - 6]
    return f"{clean}-{stamp}-{secrets.token_hex(2)}"


def _upload_model_dir(model_dir: Path, aws: Aws, bucket: str, prefix: str, name: str) -> str:
    from dogclf.sagemaker.s3 import S3Uri, upload_file
    from dogclf.serving.package import package_model

    with tempfile.TemporaryDirectory(prefix="dogclf-deploy-") as tmp:
        report = package_model(model_dir, Path(tmp) / "model.tar.gz")
        target = S3Uri(bucket, prefix.strip("/")).join("models", name, "model.tar.gz")
        upload_file(aws, report.archive, target)
    logger.info(f"Packaged {model_dir} ({report.size / 1e6:.1f} MB) and uploaded it to {target}")
    return str(target)


def _variant(
    name: str, instance_type: str, serverless_memory: int | None, max_concurrency: int, instance_count: int = 1
) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": name}
    if serverless_memory is None:
        variant |= {"InitialInstanceCount": instance_count, "InstanceType": instance_type}
    else:
        variant["ServerlessConfig"] = {"MemorySizeInMB": serverless_memory, "MaxConcurrency": max_concurrency}
    return variant


def model_request(name: str, *, role: str, image: str, model_data: str, region: str, top_k: int) -> dict[str, Any]:
    """The CreateModel request of a dogclf model archive on the PyTorch inference image (its handlers, its top-k)."""
    return {
        "ModelName": name,
        "ExecutionRoleArn": role,
        "PrimaryContainer": {
            "Image": image,
            "ModelDataUrl": model_data,
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                "SAGEMAKER_REGION": region,
                "DOGCLF_TOP_K": str(top_k),
            },
        },
        "Tags": [{"Key": "dogclf:model", "Value": model_data[-256:]}],
    }


def model_data_uri(model: str | os.PathLike[str], aws: Aws, *, name: str, bucket: str | None, prefix: str) -> str:
    """An ``s3://`` ``model.tar.gz`` as it is; a model directory packaged and uploaded under ``models/<name>/``."""
    source = str(model)
    if source.startswith("s3://"):
        return source
    return _upload_model_dir(Path(source), aws, bucket or aws.default_bucket(), prefix, name)


def _stem(model: str | os.PathLike[str]) -> str:
    """``dogclf-<backbone>`` of a model directory, ``dogclf-model`` for an archive in S3."""
    source = str(model)
    if source.startswith("s3://"):
        return "dogclf-model"
    from dogclf.artifact import load_config

    return f"dogclf-{load_config(source).backbone.replace('/', '-')}"


@deprecated_log
def deploy(
    model: str | os.PathLike[str],
    *,
    aws: Aws | Any = None,
    role: str,
    instance_type: str = "ml.m5.large",
    instance_count: int = 1,
    serverless_memory: int | None = None,
    max_concurrency: int = 5,
    endpoint_name: str | None = None,
    bucket: str | None = None,
    prefix: str = "dogclf",
    wait: bool = False,
    top_k: int = 5,
) -> DeployedEndpoint:
    """Creates a model, an endpoint config and an endpoint serving ``model``.

    Args:
        model: A model directory (packaged and uploaded) or an ``s3://`` ``model.tar.gz``.
        aws: The AWS context: an :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session`` or ``None`` (the
            environment).
        role: The execution role ARN.
        instance_type: The endpoint's instance type (ignored when serverless).
        instance_count: Instances behind the endpoint (SageMaker spreads requests over them).
        serverless_memory: Serverless endpoint memory in MB (1024-6144 in steps of 1024) instead of an instance.
        max_concurrency: Serverless: concurrent invocations.
        endpoint_name: The name of all three resources (default: unique, ``dogclf-<backbone>-...``).
        bucket: Where a model directory is uploaded (default ``sagemaker-<region>-<account>``).
        prefix: Key prefix of the upload.
        wait: Wait until the endpoint is InService.
        top_k: Breeds per answer (``DOGCLF_TOP_K`` in the container).

    Raises:
        EndpointError: A bad serverless size, or the endpoint failed to start.
        ModelDirError: A model directory that cannot be loaded.
        AwsError: An API call failed.
    """
    from dogclf.sagemaker.aws import as_aws, aws_errors
    from dogclf.sagemaker.images import inference_image

    aws = as_aws(aws)
    if serverless_memory is not None and serverless_memory not in _SERVERLESS_MEMORY:
        raise EndpointError(
            f"--serverless takes the memory in MB, one of {', '.join(map(str, _SERVERLESS_MEMORY))}; got "
            f"{serverless_memory}"
        )
    if instance_count < 1 or (serverless_memory is not None and instance_count != 1):
        raise EndpointError(
            f"--instance-count must be >= 1 and applies to instance endpoints only (serverless scales by itself); "
            f"got {instance_count}"
        )
    name = endpoint_name or resource_name(_stem(model))
    image = inference_image(aws.region, "ml.m5.large" if serverless_memory else instance_type)
    model_data = model_data_uri(model, aws, name=name, bucket=bucket, prefix=prefix)
    requests = (
        model_request(name, role=role, image=image, model_data=model_data, region=aws.region, top_k=top_k),
        {
            "EndpointConfigName": name,
            "ProductionVariants": [_variant(name, instance_type, serverless_memory, max_concurrency, instance_count)],
        },
        {"EndpointName": name, "EndpointConfigName": name},
    )
    client = aws.client("sagemaker")
    with aws_errors(f"Creating endpoint {name}"):
        client.create_model(**requests[0])
        client.create_endpoint_config(**requests[1])
        client.create_endpoint(**requests[2])
    where = f"serverless, {serverless_memory} MB" if serverless_memory else f"{instance_count} x {instance_type}"
    logger.info(f"Creating endpoint {name} ({where}) serving {model_data}")
    logger.info(f"  {aws.console_url(f'/endpoints/{name}')}")
    if wait:
        _wait_in_service(aws, name)
    return DeployedEndpoint(name, model_data, image, requests)


def _wait_in_service(aws: Aws, name: str, *, delay: int = 30) -> None:
    import botocore.exceptions

    client = aws.client("sagemaker")
    logger.info(f"Waiting for {name} to be InService (usually 5-10 minutes) ...")
    try:
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": delay})
    except botocore.exceptions.WaiterError:
        description = client.describe_endpoint(EndpointName=name)
        raise EndpointError(
            f"Endpoint {name} is {description.get('EndpointStatus')}: {description.get('FailureReason', 'no reason')}."
            f" Its CloudWatch logs are in /aws/sagemaker/Endpoints/{name}; remove it with "
            f"`dogclf sagemaker delete {name}`."
        ) from None
    logger.info(f"Endpoint {name} is InService")


def invoke(
    aws: Aws, endpoint: str, images: Sequence[str | os.PathLike[str]], *, top_k: int | None = None
) -> list[dict[str, Any]]:
    """Sends each image's bytes to the endpoint (one request each, as the seeds did); returns ``predict``'s records.

    The endpoint answers its ``DOGCLF_TOP_K`` breeds (``deploy(top_k=...)``); ``top_k`` keeps fewer.

    Each record is ``{"image": path, "predictions": [...], "unknown": ...}`` as ``dogclf predict`` prints it, or
    ``{"image": path, "error": ...}``.
    """
    from dogclf.sagemaker.aws import aws_errors

    runtime = aws.client("sagemaker-runtime")
    results: list[dict[str, Any]] = []
    for image in images:
        path = Path(image)
        record: dict[str, Any] = {"image": str(path)}
        try:
            body = path.read_bytes()
        except OSError as exc:
            results.append(record | {"error": f"cannot read {path}: {exc.strerror or exc}"})
            continue
        content_type = IMAGE_MEDIA_TYPES.get(path.suffix.lower(), "application/x-image")
        with aws_errors(f"Invoking endpoint {endpoint} with {path}"):
            answer = runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body
            )
        text = answer["Body"].read().decode("utf-8", errors="replace")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            results.append(record | {"error": f"the endpoint answered with something that is not JSON: {text[:200]!r}"})
            continue
        answer_record = record | (payload if isinstance(payload, dict) else {"predictions": payload})
        if top_k is not None and isinstance(answer_record.get("predictions"), list):
            answer_record["predictions"] = answer_record["predictions"][:top_k]
        results.append(answer_record)
    return results


def _describe(call: Callable[..., Any], what: str, **params: str) -> dict[str, Any] | None:
    """A Describe* answer, or ``None`` when AWS says there is no such resource; any other failure raises.

    Raises:
        AwsError: Bad credentials, no permission, no network ... (never taken for "not found").
    """
    import botocore.exceptions

    from dogclf.sagemaker.aws import aws_errors, is_not_found

    with aws_errors(what):
        try:
            return dict(call(**params))
        except botocore.exceptions.ClientError as exc:
            if is_not_found(exc):
                return None
            raise


@deprecated_log
def delete_endpoint(aws: Aws, name: str) -> list[str]:
    """Deletes the endpoint ``name``, its endpoint config and its models; returns what was deleted.

    A config or model of that name left behind by a failed deployment is deleted too. Only AWS's own "could not
    find" answer counts as absent: any other error (credentials, permissions, network) is raised, so a live endpoint
    is never reported as missing.

    Raises:
        EndpointError: Nothing of that name exists.
        AwsError: A call failed for another reason.
    """
    from dogclf.sagemaker.aws import aws_errors

    client = aws.client("sagemaker")
    deleted: list[str] = []
    config_name, models = name, {name}
    endpoint = _describe(client.describe_endpoint, f"Reading endpoint {name}", EndpointName=name)
    if endpoint is not None:
        config_name = endpoint["EndpointConfigName"]
        with aws_errors(f"Deleting endpoint {name}"):
            client.delete_endpoint(EndpointName=name)
        deleted.append(f"endpoint {name}")
    config = _describe(
        client.describe_endpoint_config, f"Reading endpoint config {config_name}", EndpointConfigName=config_name
    )
    if config is not None:
        models |= {variant["ModelName"] for variant in config["ProductionVariants"]}
        with aws_errors(f"Deleting endpoint config {config_name}"):
            client.delete_endpoint_config(EndpointConfigName=config_name)
        deleted.append(f"endpoint config {config_name}")
    for model in sorted(models):
        if _describe(client.describe_model, f"Reading model {model}", ModelName=model) is None:
            continue
        with aws_errors(f"Deleting model {model}"):
            client.delete_model(ModelName=model)
        deleted.append(f"model {model}")
    if not deleted:
        raise EndpointError(f"There is no endpoint, endpoint config or model named {name!r} in {aws.region}.")
    logger.info("Deleted " + ", ".join(deleted))
    return deleted
