"""``dogclf sagemaker update|autoscale|transform``: past one endpoint instance (wired into :mod:`dogclf.sagemaker.cli`).

``update ENDPOINT MODEL`` serves a new model without downtime, ``autoscale ENDPOINT --max N`` adds target-tracking
autoscaling (``--off`` removes it), ``transform --model M --input s3://... --output s3://...`` scores a whole prefix
of photos with a batch transform job (``--local``: here, through the same handlers).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SCALEOUT_COMMANDS", "add_scaleout_parsers"]


def _common(p: argparse.ArgumentParser, *, role: bool) -> None:
    if role:
        p.add_argument("--role", default=None, help="SageMaker execution role ARN (default $SAGEMAKER_ROLE)")
        p.add_argument("--bucket", default=None, help="S3 bucket for uploads (default sagemaker-<region>-<account>)")
        p.add_argument("--prefix", default="dogclf", help="key prefix of uploads (default dogclf)")
        p.add_argument("--top-k", type=int, default=5, help="breeds per answer (default 5)")
    p.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")


def add_scaleout_parsers(commands: Any) -> None:
    """Adds ``update``, ``autoscale`` and ``transform`` to the ``dogclf sagemaker`` subparsers."""
    update = commands.add_parser(
        "update",
        help="serve a new model on an existing endpoint without downtime",
        description="Create a new model and endpoint config and switch the endpoint to them blue/green: the old "
        "instances answer until the new ones are healthy. Then the old config and model are deleted.",
    )
    update.add_argument("endpoint", metavar="ENDPOINT")
    update.add_argument("model", metavar="MODEL", help="model directory, or a job's s3://.../model.tar.gz")
    update.add_argument("--instance-type", default=None, help="a new instance type (default: the current one)")
    update.add_argument("--instance-count", type=int, default=None, help="instances (default: as many as now)")
    update.add_argument("--no-wait", action="store_true", help="return at once (the old config and model stay)")
    _common(update, role=True)

    scale = commands.add_parser(
        "autoscale",
        help="scale an endpoint's instances with its traffic (target tracking)",
        description="Register the endpoint with Application Auto Scaling and track a target number of invocations "
        "per instance per minute (SageMakerVariantInvocationsPerInstance).",
    )
    scale.add_argument("endpoint", metavar="ENDPOINT")
    scale.add_argument("--min", type=int, default=1, dest="min_instances", help="fewest instances (default 1)")
    scale.add_argument("--max", type=int, default=None, dest="max_instances", help="most instances")
    scale.add_argument("--target", type=float, default=70.0, help="invocations per instance per minute (default 70)")
    scale.add_argument("--off", action="store_true", help="remove the endpoint's autoscaling")
    _common(scale, role=False)

    transform = commands.add_parser(
        "transform",
        help="score every photo under an S3 prefix with a batch transform job",
        description="Run the model over every .jpg/.jpeg/.png under --input with SageMaker batch transform (no "
        "endpoint): each photo's answer, as `dogclf sagemaker invoke` prints it, goes to OUTPUT/<photo>.out.",
    )
    transform.add_argument("--model", required=True, help="model directory, or a job's s3://.../model.tar.gz")
    transform.add_argument("--input", required=True, help="s3:// prefix of the photos (a folder with --local)")
    transform.add_argument("--output", required=True, help="s3:// prefix for the answers (a folder with --local)")
    transform.add_argument("--instance-type", default="ml.m5.large", help="transform instance (default ml.m5.large)")
    transform.add_argument("--instance-count", type=int, default=1, help="instances sharing the photos (default 1)")
    transform.add_argument("--job-name", default=None, help="name of the job and its model")
    transform.add_argument("--wait", action="store_true", help="wait until the job ends")
    transform.add_argument("--local", action="store_true", help="run it here through the same handlers")
    _common(transform, role=True)


def _aws(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from dogclf.sagemaker.aws import Aws

    return Aws.from_environ(environ, region=args.region)


def _cmd_update(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.aws import resolve_role
    from dogclf.sagemaker.scaling import update_endpoint

    update_endpoint(
        args.model,
        aws=_aws(args, environ),
        endpoint=args.endpoint,
        role=resolve_role(args.role, environ),
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        bucket=args.bucket,
        prefix=args.prefix,
        top_k=args.top_k,
        wait=not args.no_wait,
    )
    return 0


def _cmd_autoscale(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.scaling import autoscale_endpoint, remove_autoscaling

    aws = _aws(args, environ)
    if args.off:
        remove_autoscaling(aws, args.endpoint)
        return 0
    if args.max_instances is None:
        raise ValueError("autoscale needs --max N (the most instances), or --off")
    autoscale_endpoint(
        aws,
        args.endpoint,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        invocations_per_instance=args.target,
    )
    return 0


def _cmd_transform(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.transform import launch_transform_job, run_transform_locally

    remote = any(str(x).startswith("s3://") for x in (args.model, args.input, args.output))
    aws = _aws(args, environ) if remote or not args.local else None
    if args.local:
        result = run_transform_locally(args.model, args.input, args.output, aws=aws, top_k=args.top_k)
        where = args.output.rstrip("/")
        print(f"Wrote {len(result.outputs)} answers to {where}/ in {result.seconds:.1f} s (model loading included)")
        return 0
    from dogclf.sagemaker.aws import resolve_role

    job = launch_transform_job(
        args.model,
        args.input,
        args.output,
        aws=aws,
        role=resolve_role(args.role, environ),
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        name=args.job_name,
        bucket=args.bucket,
        prefix=args.prefix,
        top_k=args.top_k,
    )
    if args.wait:
        job.wait()
    else:
        print(f"Check it with: aws sagemaker describe-transform-job --transform-job-name {job.name}")
    return 0


SCALEOUT_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "update": _cmd_update,
    "autoscale": _cmd_autoscale,
    "transform": _cmd_transform,
}
