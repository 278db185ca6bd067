"""Scaling an endpoint out: a new model behind the same endpoint without downtime, and target-tracking autoscaling.

:func:`update_endpoint` creates a new Model and EndpointConfig (same variant name, instance type and current instance
count unless told otherwise) and sends UpdateEndpoint with a blue/green, all-at-once policy: SageMaker starts the new
fleet, moves the traffic when it is healthy and only then removes the old one, so requests keep being answered; if
the new fleet fails, the endpoint stays on the old configuration. When it is done, the old config and model are
deleted. :func:`autoscale_endpoint` registers the endpoint's variant with Application Auto Scaling and attaches a
target-tracking policy on ``SageMakerVariantInvocationsPerInstance`` (invocations per instance per minute), the
policy AWS's endpoint autoscaling guide starts with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.sagemaker.endpoint import EndpointError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws

__all__ = [
    "INVOCATIONS_METRIC",
    "SCALABLE_DIMENSION",
    "EndpointUpdate",
    "autoscale_endpoint",
    "remove_autoscaling",
    "scaling_resource_id",
    "update_endpoint",
]

logger = logging.getLogger(__name__)

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
_BLUE_GREEN = {
    "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}}
}


@dataclass(frozen=True)
class EndpointUpdate:
    """What :func:`update_endpoint` did.

    Attributes:
        endpoint: The endpoint.
        config: Its new endpoint config (and model) name.
        previous_config: The config it served before.
        requests: CreateModel, CreateEndpointConfig and UpdateEndpoint, in order.
        deleted: The old config and models removed after the switch (empty without waiting).
    """

    endpoint: str
    config: str
    previous_config: str
    requests: tuple[dict[str, Any], ...]
    deleted: tuple[str, ...] = ()


def scaling_resource_id(endpoint: str, variant: str = "AllTraffic") -> str:
    """Application Auto Scaling's id of an endpoint variant: ``endpoint/<name>/variant/<variant>``."""
    return f"endpoint/{endpoint}/variant/{variant}"


def _current(aws: Aws, endpoint: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(DescribeEndpoint, DescribeEndpointConfig, its one variant)`` of an endpoint dogclf can update.

    Raises:
        EndpointError: Not InService, or several variants (dogclf serves one).
    """
    from dogclf.sagemaker.aws import aws_errors

    client = aws.client("sagemaker")
    with aws_errors(f"Reading endpoint {endpoint}"):
        described = client.describe_endpoint(EndpointName=endpoint)
        config = client.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    if described["EndpointStatus"] != "InService":
        raise EndpointError(
            f"Endpoint {endpoint} is {described['EndpointStatus']}; it can be changed once it is InService "
            f"(dogclf sagemaker deploy ... --wait, or check it in {aws.console_url(f'/endpoints/{endpoint}')})."
        )
    variants = config["ProductionVariants"]
    if len(variants) != 1:
        names = ", ".join(v["VariantName"] for v in variants)
        raise EndpointError(f"Endpoint {endpoint} has {len(variants)} variants ({names}); dogclf manages one.")
    return described, config, variants[0]


def _scalable_target(aws: Aws, endpoint: str, variant: str) -> dict[str, Any] | None:
    from dogclf.sagemaker.aws import aws_errors

    with aws_errors(f"Reading the autoscaling of endpoint {endpoint}"):
        targets = aws.client("application-autoscaling").describe_scalable_targets(
            ServiceNamespace="sagemaker",
            ResourceIds=[scaling_resource_id(endpoint, variant)],
            ScalableDimension=SCALABLE_DIMENSION,
        )["ScalableTargets"]
    return targets[0] if targets else None


def _new_variant(
    old: Mapping[str, Any], described: Mapping[str, Any], name: str, instance_type: str | None, count: int | None
) -> dict[str, Any]:
    variant = {k: old[k] for k in ("VariantName", "InitialVariantWeight", "ServerlessConfig") if k in old}
    variant["ModelName"] = name
    if "ServerlessConfig" in old:
        if instance_type or count:
            raise EndpointError("A serverless endpoint has no instances: drop --instance-type and --instance-count")
        return variant
    running = next(
        (
            v.get("CurrentInstanceCount")
            for v in described.get("ProductionVariants", [])
            if v["VariantName"] == old["VariantName"]
        ),
        None,
    )
    variant["InstanceType"] = instance_type or old["InstanceType"]
    variant["InitialInstanceCount"] = count or running or old.get("InitialInstanceCount", 1)
    return variant


@deprecated_log
def update_endpoint(
    model: str | os.PathLike[str],
    *,
    aws: Aws | Any = None,
    endpoint: str,
    role: str,
    instance_type: str | None = None,
    instance_count: int | None = None,
    bucket: str | None = None,
    prefix: str = "dogclf",
    top_k: int = 5,
    name: str | None = None,
    wait: bool = True,
    poll: int = 30,
) -> EndpointUpdate:
    """Points an existing endpoint at a new model without downtime (blue/green, all at once).

    Args:
        model: A model directory (packaged and uploaded) or an ``s3://`` ``model.tar.gz``.
        aws: An :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session`` or ``None`` (the environment).
        endpoint: The endpoint to update (InService).
        role: The execution role ARN of the new model.
        instance_type: A new instance type (default: the current one).
        instance_count: A new instance count (default: the count running now, so a scaled-out endpoint keeps it).
        bucket: Where a model directory is uploaded (default ``sagemaker-<region>-<account>``).
        prefix: Key prefix of the upload.
        top_k: Breeds per answer.
        name: The new model's and endpoint config's name (default: unique, ``<endpoint>-<UTC time>-<random>``).
        wait: Wait until the new fleet serves, then delete the old config and model.
        poll: Seconds between checks while waiting.

    Raises:
        EndpointError: The endpoint is not InService, has several variants, is autoscaled and the instance type
            would change, or the update was rolled back.
        AwsError: An API call failed.
    """
    from dogclf.sagemaker.aws import as_aws, aws_errors
    from dogclf.sagemaker.endpoint import model_data_uri, model_request, resource_name
    from dogclf.sagemaker.images import inference_image
    from dogclf.sagemaker.request_check import validate_request

    aws = as_aws(aws)
    described, old_config, old_variant = _current(aws, endpoint)
    serverless = "ServerlessConfig" in old_variant
    if (
        instance_type
        and instance_type != old_variant.get("InstanceType")
        and _scalable_target(aws, endpoint, old_variant["VariantName"])
    ):
        raise EndpointError(
            f"Endpoint {endpoint} is autoscaled, and AWS refuses an update that changes an autoscaled variant's "
            f"instance type: first `dogclf sagemaker autoscale {endpoint} --off`, update, then autoscale again."
        )
    name = name or resource_name(endpoint)
    variant = _new_variant(old_variant, described, name, instance_type, instance_count)
    image = inference_image(aws.region, "ml.m5.large" if serverless else variant["InstanceType"])
    model_data = model_data_uri(model, aws, name=name, bucket=bucket, prefix=prefix)
    update: dict[str, Any] = {"EndpointName": endpoint, "EndpointConfigName": name}
    if not serverless:
        update["DeploymentConfig"] = _BLUE_GREEN
    requests = (
        model_request(name, role=role, image=image, model_data=model_data, region=aws.region, top_k=top_k),
        {"EndpointConfigName": name, "ProductionVariants": [variant]},
        update,
    )
    for operation, request in zip(("CreateModel", "CreateEndpointConfig", "UpdateEndpoint"), requests, strict=True):
        validate_request(operation, request)
    client = aws.client("sagemaker")
    with aws_errors(f"Updating endpoint {endpoint}"):
        client.create_model(**requests[0])
        client.create_endpoint_config(**requests[1])
        client.update_endpoint(**requests[2])
    previous = old_config["EndpointConfigName"]
    logger.info(
        f"Updating endpoint {endpoint} to {model_data} (config {name}; it keeps answering from {previous} meanwhile)"
    )
    if not wait:
        logger.info(f"When it is InService again, the old config {previous} and its model can be deleted.")
        return EndpointUpdate(endpoint, name, previous, requests)
    deleted = _finish_update(aws, endpoint, name, old_config, poll=poll)
    return EndpointUpdate(endpoint, name, previous, requests, deleted)


def _finish_update(aws: Aws, endpoint: str, name: str, old_config: Mapping[str, Any], *, poll: int) -> tuple[str, ...]:
    """Waits for the switch; deletes the old config and models once the endpoint serves the new one."""
    from dogclf.sagemaker.aws import aws_errors
    from dogclf.sagemaker.endpoint import _wait_in_service

    _wait_in_service(aws, endpoint, delay=poll)
    client = aws.client("sagemaker")
    with aws_errors(f"Reading endpoint {endpoint}"):
        now = client.describe_endpoint(EndpointName=endpoint)
    if now["EndpointConfigName"] != name:
        raise EndpointError(
            f"The update of endpoint {endpoint} was rolled back; it still serves {now['EndpointConfigName']}: "
            f"{now.get('FailureReason', 'no reason given')}. The new config and model {name} are left for a look."
        )
    deleted = []
    previous = old_config["EndpointConfigName"]
    with aws_errors(f"Deleting the old config {previous} of endpoint {endpoint}"):
        client.delete_endpoint_config(EndpointConfigName=previous)
        deleted.append(f"endpoint config {previous}")
        for model in sorted({v["ModelName"] for v in old_config["ProductionVariants"]} - {name}):
            client.delete_model(ModelName=model)
            deleted.append(f"model {model}")
    logger.info(f"Endpoint {endpoint} serves {name}; deleted " + ", ".join(deleted))
    return tuple(deleted)


@deprecated_log
def autoscale_endpoint(
    aws: Aws | Any,
    endpoint: str,
    *,
    min_instances: int = 1,
    max_instances: int,
    invocations_per_instance: float = 70.0,
    scale_in_cooldown: int = 300,
    scale_out_cooldown: int = 60,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Target-tracking autoscaling of an endpoint's instances on invocations per instance per minute.

    Returns:
        The RegisterScalableTarget and PutScalingPolicy requests sent.

    Raises:
        EndpointError: Bad limits, a serverless endpoint (it scales by itself), or an endpoint not InService.
        AwsError: An API call failed.
    """
    from dogclf.sagemaker.aws import as_aws, aws_errors

    aws = as_aws(aws)  # an Aws, a boto3.Session, or None (the environment)
    if not 1 <= min_instances <= max_instances:
        raise EndpointError(f"Need 1 <= --min <= --max instances, got --min {min_instances} --max {max_instances}")
    if invocations_per_instance <= 0:
        raise EndpointError(f"--target must be > 0 invocations per instance per minute, got {invocations_per_instance}")
    _, _, variant = _current(aws, endpoint)
    if "ServerlessConfig" in variant:
        raise EndpointError(f"Endpoint {endpoint} is serverless: it scales by itself (--max-concurrency).")
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint, variant["VariantName"]),
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": min_instances,
        "MaxCapacity": max_instances,
    }
    policy = {
        "PolicyName": f"{endpoint}-invocations",
        "ServiceNamespace": "sagemaker",
        "ResourceId": target["ResourceId"],
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC},
            "ScaleInCooldown": scale_in_cooldown,
            "ScaleOutCooldown": scale_out_cooldown,
        },
    }
    scaling = aws.client("application-autoscaling")
    with aws_errors(f"Autoscaling endpoint {endpoint}"):
        scaling.register_scalable_target(**target)
        scaling.put_scaling_policy(**policy)
    logger.info(
        f"Endpoint {endpoint} scales between {min_instances} and {max_instances} instances, aiming at "
        f"{invocations_per_instance:g} invocations per instance per minute (policy {policy['PolicyName']})"
    )
    return target, policy


@deprecated_log
def remove_autoscaling(aws: Aws | Any, endpoint: str) -> bool:
    """Deletes the endpoint's scaling policies and deregisters it; ``False`` when it was not autoscaled."""
    from dogclf.sagemaker.aws import as_aws, aws_errors

    aws = as_aws(aws)
    scaling = aws.client("application-autoscaling")
    resource = scaling_resource_id(endpoint)
    with aws_errors(f"Removing the autoscaling of endpoint {endpoint}"):
        if _scalable_target(aws, endpoint, "AllTraffic") is None:
            logger.info(f"Endpoint {endpoint} is not autoscaled.")
            return False
        policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
        for policy in policies["ScalingPolicies"]:
            scaling.delete_scaling_policy(
                PolicyName=policy["PolicyName"],
                ServiceNamespace="sagemaker",
                ResourceId=resource,
                ScalableDimension=SCALABLE_DIMENSION,
            )
        scaling.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION
        )
    logger.info(f"Endpoint {endpoint} is no longer autoscaled; it keeps its current instances.")
    return True
