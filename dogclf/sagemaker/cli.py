"""``dogclf sagemaker ...``: train, tune, deploy, invoke, delete, download (wired into :mod:`dogclf.cli`).

Building the parsers imports nothing heavy; boto3 and the SageMaker SDK are imported when a command runs.
``dogclf sagemaker train`` takes ``dogclf train``'s own options (they become the job's hyperparameters) plus the
job's: instance type and count, spot, limits, role, bucket.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_sagemaker_parser", "hyperparameters_from_args", "run_sagemaker"]

# dogclf train's options that the container sets itself (SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, checkpoints, cache).
_CONTAINER_OPTIONS = frozenset({"checkpoint_dir", "output_dir", "cache_dir", "resume", "overwrite", "progress"})
# Always sent, even at their defaults, so the job's console page shows the seeds' tuned trio.
_ALWAYS_SENT = frozenset({"epochs", "batch_size", "lr"})


def _job_options(p: argparse.ArgumentParser, *, instance: str = "ml.m5.large") -> None:
    p.add_argument("--instance-type", default=instance, help=f"training instance type (default {instance})")
    p.add_argument("--instance-count", type=int, default=1, help="instances (more than 1 runs under torchrun)")
    p.add_argument("--volume-size", type=int, default=30, help="instance storage in GB (default 30)")
    p.add_argument("--spot", action="store_true", help="managed spot training (interrupted jobs resume by themselves)")
    p.add_argument("--max-runtime", type=int, default=24 * 3600, help="seconds the job may train (default 86400)")
    p.add_argument("--max-wait", type=int, default=None, help="with --spot: seconds to wait + train (default 2x)")
    p.add_argument("--framework-version", default="", help="PyTorch training image version (default 2.8.0)")
    p.add_argument("--features", default=None, help="backbone features (a feature-cache folder or s3:// prefix)")


def _aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", default=None, help="SageMaker execution role ARN (default $SAGEMAKER_ROLE)")
    p.add_argument("--bucket", default=None, help="S3 bucket (default sagemaker-<region>-<account>, created)")
    p.add_argument("--prefix", default="dogclf", help="key prefix of everything written to S3 (default dogclf)")
    p.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")


def _add_train(sub: Any) -> None:
    from dogclf.cli import train_parser

    p: argparse.ArgumentParser = sub.add_parser(
        "train",
        parents=[train_parser(add_help=False)],
        help="launch a SageMaker training job that runs dogclf train",
        description="Upload the data and dogclf's code, then launch a SageMaker training job that runs `dogclf "
        "train` with these options as hyperparameters. --local runs the same job here through the SageMaker "
        "training toolkit (no Docker, no AWS account).",
    )
    for action in p._actions:
        if action.dest in _CONTAINER_OPTIONS:
            action.help = argparse.SUPPRESS
        elif action.dest == "data":
            action.type = str  # a Path would fold s3:// into s3:/
            action.help = "local data folder (uploaded; unchanged files are skipped) or an s3:// prefix"
        elif action.dest == "out":
            action.required = False
            action.help = "with --local: where model.tar.gz, output.tar.gz and checkpoints/ go"
    _job_options(p)
    _aws_options(p)
    p.add_argument("--job-name", default=None, help="job name (default dogclf-<backbone>-<time>-<random>)")
    p.add_argument("--wait", action="store_true", help="follow the job's status and log lines until it ends")
    p.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request as JSON, send nothing")
    p.add_argument("--local", action="store_true", help="run the job here through the SageMaker training toolkit")


def add_sagemaker_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds ``sagemaker`` and its subcommands to the ``dogclf`` subparsers; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "sagemaker", help="train, tune and deploy on AWS SageMaker (or run the same job here with --local)"
    )
    commands = p.add_subparsers(dest="sagemaker_command", required=True, metavar="COMMAND")
    _add_train(commands)
    download = commands.add_parser("download", help="fetch a training job's model into a model directory")
    download.add_argument("job", metavar="JOB", help="training job name")
    download.add_argument("--out", required=True, type=Path, help="model directory to write")
    download.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    download.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")
    return p


def hyperparameters_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The job's hyperparameters: every ``dogclf train`` option given a non-default value (and the seeds' trio)."""
    from dogclf.cli import train_parser
    from dogclf.sagemaker.hyperparameters import to_hyperparameters
    from dogclf.sagemaker.source import NAMES_FILE

    options: dict[str, Any] = {}
    for action in train_parser()._actions:
        dest = action.dest
        if not action.option_strings or dest in _CONTAINER_OPTIONS or dest in ("help", "data", "out", "backbone"):
            continue
        value = getattr(args, dest, None)
        if value is None or (value == action.default and dest not in _ALWAYS_SENT):
            continue
        flag = max(action.option_strings, key=len).lstrip("-")
        options[flag] = NAMES_FILE if dest == "names" else value
    return to_hyperparameters(options)


def _log(message: str) -> None:
    print(message, flush=True)


def _spec(args: argparse.Namespace, hyperparameters: Mapping[str, str]) -> Any:
    from dogclf.sagemaker.training_job import TrainingJobSpec

    return TrainingJobSpec(
        backbone=args.backbone,
        hyperparameters=hyperparameters,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size,
        spot=args.spot,
        max_runtime=args.max_runtime,
        max_wait=args.max_wait,
        framework_version=args.framework_version,
        names_file=args.names,
    )


def _cmd_train(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.training_job import format_request

    spec = _spec(args, hyperparameters_from_args(args))
    if args.local:
        return _train_local(args, spec, environ)
    from dogclf.sagemaker.aws import Aws, resolve_role
    from dogclf.sagemaker.training_job import launch_training_job

    role = resolve_role(args.role, environ)
    aws = Aws.from_environ(environ, region=args.region, require_credentials=not (args.dry_run and args.bucket))
    features = _features_uri(args.features, aws, args, environ)
    job = launch_training_job(
        spec,
        str(args.data),
        aws=aws,
        role=role,
        bucket=args.bucket,
        prefix=args.prefix,
        name=args.job_name,
        features=features,
        dry_run=args.dry_run,
        log=_log,
    )
    if args.dry_run:
        print(format_request(job.request or {}))
        return 0
    if args.wait:
        job.wait(log=_log)
        print(f"Fetch the model with: dogclf sagemaker download {job.name} --out models/{job.name}")
    else:
        print(
            f"Follow it with: dogclf sagemaker train ... --wait, or fetch the model when it completes with:\n"
            f"  dogclf sagemaker download {job.name} --out models/{job.name}"
        )
    return 0


def _features_uri(features: str | None, aws: Any, args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """An ``s3://`` features prefix as it is; a local feature-cache folder synced to S3 first."""
    if features is None or features.startswith("s3://"):
        return features
    from dogclf.sagemaker.s3 import S3Uri, sync_folder

    bucket = args.bucket or aws.default_bucket()
    folder = Path(features).expanduser()
    if not folder.is_dir():
        from dogclf.errors import DatasetError

        raise DatasetError(
            f"--features folder {str(folder)!r} does not exist (a feature cache, e.g. ~/.cache/dogclf/features)"
        )
    return (
        str(sync_folder(aws, folder, S3Uri(bucket, args.prefix.strip("/")).join("features", folder.name), log=_log).uri)
        + "/"
    )


def _train_local(args: argparse.Namespace, spec: Any, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.local import run_spec_locally

    if args.out is None:
        raise ValueError("--local needs --out DIR: where the job's model.tar.gz, output.tar.gz and checkpoints go")
    result = run_spec_locally(
        spec,
        data=args.data,
        out_dir=args.out,
        features=args.features,
        job_name=args.job_name,
        environ=environ,
        log=_log,
    )
    print(f"Local job finished in {result.seconds:.0f} s: {result.model_tar}, {result.output_tar}")
    print("Final metrics: " + " ".join(f"{k}={v:g}" for k, v in result.metrics.items()))
    return 0


def _cmd_download(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.training_job import TrainingJob

    aws = Aws.from_environ(environ, region=args.region)
    out = TrainingJob.attach(args.job, aws).download(args.out, overwrite=args.overwrite)
    print(f"Model of {args.job} in {out}: try `dogclf predict --model {out} photo.jpg` or `dogclf serve --model {out}`")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "train": _cmd_train,
    "download": _cmd_download,
}


def run_sagemaker(args: argparse.Namespace) -> int:
    """Runs ``dogclf sagemaker COMMAND``; returns the exit code."""
    return _COMMANDS[args.sagemaker_command](args, args.environ)


def print_json(data: Any) -> None:
    """Prints ``data`` as indented JSON."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
