"""``dogclf sagemaker ...``: train, tune, deploy, invoke, delete, download (wired into :mod:`dogclf.cli.app`).

Building the parsers imports nothing heavy; boto3 and the SageMaker SDK are imported when a command runs.
``dogclf sagemaker train`` takes ``dogclf train``'s own options (they become the job's hyperparameters) plus the
job's: instance type and count, spot, limits, role, bucket.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_sagemaker_parser", "hyperparameters_from_args", "run_sagemaker"]

logger = logging.getLogger(__name__)

# dogclf train's options that the container sets itself (SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, checkpoints, cache).
_CONTAINER_OPTIONS = frozenset(
    {"checkpoint_dir", "output_dir", "cache_dir", "resume", "overwrite", "progress", "smdebug_out", "rule_param"}
)


def _job_options(p: argparse.ArgumentParser, *, instance: str = "ml.m5.large") -> None:
    p.add_argument("--instance-type", default=instance, help=f"training instance type (default {instance})")
    p.add_argument("--instance-count", type=int, default=1, help="instances (more than 1 runs under torchrun)")
    p.add_argument("--volume-size", type=int, default=30, help="instance storage in GB (default 30)")
    p.add_argument("--spot", action="store_true", help="managed spot training (interrupted jobs resume by themselves)")
    p.add_argument("--max-runtime", type=int, default=24 * 3600, help="seconds the job may train (default 86400)")
    p.add_argument("--max-wait", type=int, default=None, help="with --spot: seconds to wait + train (default 2x)")
    p.add_argument("--framework-version", default="", help="PyTorch training image version (default 2.8.0)")
    p.add_argument("--features", default=None, help="backbone features (a feature-cache folder or s3:// prefix)")
    from dogclf.sagemaker.job_settings import add_job_settings_options

    add_job_settings_options(p)


def _aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", default=None, help="SageMaker execution role ARN (default $SAGEMAKER_ROLE)")
    p.add_argument("--bucket", default=None, help="S3 bucket (default sagemaker-<region>-<account>, created)")
    p.add_argument("--prefix", default="dogclf", help="key prefix of everything written to S3 (default dogclf)")
    p.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")


def _with_train_options(sub: Any, command: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that takes ``dogclf train``'s options (they become the job's hyperparameters)."""
    from dogclf.pipeline.options import train_parser

    p: argparse.ArgumentParser = sub.add_parser(command, parents=[train_parser(add_help=False)], **kwargs)
    for action in p._actions:
        if action.dest in _CONTAINER_OPTIONS:
            action.help = argparse.SUPPRESS
        elif action.dest == "data":
            action.type = str  # a Path would fold s3:// into s3:/
            action.help = "local data folder (uploaded; unchanged files are skipped) or an s3:// prefix"
        elif action.dest == "out":
            action.required = False
        elif action.dest == "tensorboard":  # in a job: SageMaker's TensorBoard output, uploaded to S3
            action.nargs, action.const, action.type = "?", "auto", str
            action.help = "log TensorBoard scalars and upload them (default s3://BUCKET/PREFIX/jobs/<job>/tensorboard)"
    return p


def _add_train(sub: Any) -> None:
    p = _with_train_options(
        sub,
        "train",
        help="launch a SageMaker training job that runs dogclf train",
        description="Upload the data and dogclf's code, then launch a SageMaker training job that runs `dogclf "
        "train` with these options as hyperparameters. --local runs the same job here through the SageMaker "
        "training toolkit (no Docker, no AWS account).",
    )
    _set_help(p, "out", "with --local: where model.tar.gz, output.tar.gz and checkpoints/ go")
    _job_options(p)
    _aws_options(p)
    p.add_argument("--job-name", default=None, help="job name (default dogclf-<backbone>-<time>-<random>)")
    p.add_argument(
        "--debugger",
        action="store_true",
        help="attach SageMaker Debugger's hook and built-in rules and the Profiler (accounts that still have them)",
    )
    p.add_argument("--wait", action="store_true", help="follow the job's status and log lines until it ends")
    p.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request as JSON, send nothing")
    p.add_argument("--local", action="store_true", help="run the job here through the SageMaker training toolkit")


def _set_help(p: argparse.ArgumentParser, dest: str, text: str) -> None:
    for action in p._actions:
        if action.dest == dest:
            action.help = text


def _add_tune(sub: Any) -> None:
    p = _with_train_options(
        sub,
        "tune",
        help="launch a SageMaker tuning job over dogclf tune's search space",
        description="A SageMaker hyperparameter tuning job whose trials run `dogclf train`: the search space is "
        "dogclf tune's (or a seed's preset), the objective valid_top1 maximised from the training log. Other dogclf "
        "train options are fixed for every trial. --local runs the trials here through the training toolkit.",
    )
    _set_help(p, "out", "where best_params.json, trials.csv and history.png go (and, with --local, the trials)")
    p.add_argument(
        "--space",
        default="default",
        help="search space: default, seed-resnet18, seed-inception, or a JSON file (see docs/tuning.md)",
    )
    p.add_argument("--max-jobs", type=int, default=20, help="trials in all (default 20)")
    p.add_argument("--max-parallel-jobs", type=int, default=2, help="trials at a time (default 2)")
    p.add_argument("--strategy", default="Bayesian", help="Bayesian (default), Random, Hyperband or Grid")
    p.add_argument(
        "--early-stopping", action=argparse.BooleanOptionalAction, default=True, help="SageMaker early stopping Auto"
    )
    _job_options(p)
    _aws_options(p)
    p.add_argument("--job-name", default=None, help="tuning job name (at most 32 characters)")
    p.add_argument("--wait", action="store_true", help="wait for the tuning job, then write its results to --out")
    p.add_argument("--train-best", action="store_true", help="then train the final model with the best values")
    p.add_argument("--dry-run", action="store_true", help="print the tuning request as JSON, send nothing")
    p.add_argument("--local", action="store_true", help="run the trials here through the SageMaker training toolkit")
    from dogclf.sagemaker.tune_options import add_tuning_options

    add_tuning_options(p)


def add_sagemaker_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds ``sagemaker`` and its subcommands to the ``dogclf`` subparsers; returns its parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "sagemaker", help="train, tune and deploy on AWS SageMaker (or run the same job here with --local)"
    )
    commands = p.add_subparsers(dest="sagemaker_command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_tune(commands)
    deploy = commands.add_parser("deploy", help="serve a model on a SageMaker endpoint")
    deploy.add_argument("model", metavar="MODEL", help="model directory, or a job's s3://.../model.tar.gz")
    where = deploy.add_mutually_exclusive_group()
    where.add_argument("--instance-type", default="ml.m5.large", help="endpoint instance (default ml.m5.large)")
    where.add_argument("--serverless", type=int, default=None, metavar="MEMORY_MB", help="serverless, with this memory")
    deploy.add_argument("--instance-count", type=int, default=1, help="instances behind the endpoint (default 1)")
    deploy.add_argument("--max-concurrency", type=int, default=5, help="serverless: concurrent requests (default 5)")
    deploy.add_argument("--endpoint-name", default=None, help="name of the endpoint, its config and model")
    deploy.add_argument("--top-k", type=int, default=5, help="breeds per answer (default 5)")
    deploy.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    _aws_options(deploy)
    invoke = commands.add_parser("invoke", help="send photos (their JPEG/PNG bytes) to an endpoint")
    invoke.add_argument("endpoint", metavar="ENDPOINT")
    invoke.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    invoke.add_argument("--top-k", type=int, default=None, help="show at most this many breeds")
    invoke.add_argument("--json", action="store_true", help="print JSON (a list, one object per image)")
    invoke.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")
    delete = commands.add_parser("delete", help="delete an endpoint, its endpoint config and its model")
    delete.add_argument("endpoint", metavar="ENDPOINT")
    delete.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")
    download = commands.add_parser("download", help="fetch a training job's model into a model directory")
    download.add_argument("job", metavar="JOB", help="training job name")
    download.add_argument("--out", required=True, type=Path, help="model directory to write")
    download.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    download.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")
    from dogclf.sagemaker.followup import add_followup_parsers
    from dogclf.sagemaker.scaleout_cli import add_scaleout_parsers

    add_followup_parsers(commands)
    add_scaleout_parsers(commands)
    return p


def hyperparameters_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The job's hyperparameters: every ``dogclf train`` option given on the command line or set off its default."""
    from dogclf.pipeline.options import train_parser
    from dogclf.sagemaker.hyperparameters import to_hyperparameters
    from dogclf.sagemaker.source import NAMES_FILE

    options: dict[str, Any] = {}
    given = {a.split("=", 1)[0] for a in getattr(args, "argv", [])}
    for action in train_parser()._actions:
        dest = action.dest
        if not action.option_strings or dest in _CONTAINER_OPTIONS or dest in ("help", "data", "out", "backbone"):
            continue
        value = getattr(args, dest, None)
        explicit = any(option in given for option in action.option_strings)
        if value is None or (value == action.default and not explicit) or dest == "tensorboard":
            continue
        # The first long name: --novelty, not --no-novelty (False is sent as "false", which the entry point reads)
        flag = next(o for o in action.option_strings if o.startswith("--")).lstrip("-")
        options[flag] = NAMES_FILE if dest == "names" else value
    return to_hyperparameters(options)


def _spec(args: argparse.Namespace, hyperparameters: Mapping[str, str]) -> Any:
    from dogclf.sagemaker.job_settings import job_settings_from_args
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
        settings=job_settings_from_args(args),
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
    job = launch_training_job(
        spec,
        str(args.data),
        aws=aws,
        role=role,
        bucket=args.bucket,
        prefix=args.prefix,
        name=args.job_name,
        features=args.features,
        debugger=args.debugger,
        tensorboard=args.tensorboard,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        print(format_request(job.request or {}))
        return 0
    if args.wait:
        job.wait()
        print(f"Fetch the model with: dogclf sagemaker download {job.name} --out models/{job.name}")
    else:
        print(
            f"Follow it with: dogclf sagemaker logs {job.name} --follow (or status, wait, stop {job.name}); fetch "
            f"the model when it completes with:\n  dogclf sagemaker download {job.name} --out models/{job.name}"
        )
    return 0


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


def _cmd_tune(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.tuning.space import resolve_space

    space = resolve_space(args.space)
    searched = {name.replace("_", "-") for name in space.params}
    hyperparameters = {k: v for k, v in hyperparameters_from_args(args).items() if k not in searched}
    spec = _spec(args, hyperparameters)
    if args.local:
        from dogclf.sagemaker.tune_options import local_trial_spec

        return _tune_local(args, local_trial_spec(args, spec), space, environ)
    from dogclf.sagemaker.aws import Aws, resolve_role
    from dogclf.sagemaker.training_job import format_request
    from dogclf.sagemaker.tune_options import tuning_kwargs
    from dogclf.sagemaker.tuning_job import describe_trials, launch_tuning_job, write_tuning_results

    role = resolve_role(args.role, environ)
    aws = Aws.from_environ(environ, region=args.region, require_credentials=not (args.dry_run and args.bucket))
    job = launch_tuning_job(
        spec,
        space,
        str(args.data),
        aws=aws,
        role=role,
        bucket=args.bucket,
        prefix=args.prefix,
        name=args.job_name,
        features=args.features,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        strategy=args.strategy,
        early_stopping=args.early_stopping,
        dry_run=args.dry_run,
        **tuning_kwargs(args),
    )
    if args.dry_run:
        print(format_request(job.request))
        return 0
    if not (args.wait or args.train_best):
        print(
            f"Follow it at {job.console_url} or with: dogclf sagemaker status {job.name}; collect the results "
            f"when it ends with: dogclf sagemaker wait {job.name} --out DIR (stop it: dogclf sagemaker stop {job.name})"
        )
        return 0
    job.wait()
    if args.out is not None:
        write_tuning_results(
            args.out,
            describe_trials(aws, job.name, space),
            space=space,
            metric=job.objective["MetricName"],
            maximize=job.objective["Type"] == "Maximize",
            job_name=job.name,
            backbone=spec.backbone,
        )
    if args.train_best:
        _launch_best(args, spec, job.best_hyperparameters(), aws, role)
    return 0


def _launch_best(args: argparse.Namespace, spec: Any, best: Mapping[str, str], aws: Any, role: str) -> None:
    import dataclasses

    from dogclf.sagemaker.training_job import launch_training_job

    logger.info(
        "Training the final model with the best trial's values: " + " ".join(f"{k}={v}" for k, v in best.items())
    )
    final = launch_training_job(
        dataclasses.replace(spec, hyperparameters=dict(best)),
        str(args.data),
        aws=aws,
        role=role,
        bucket=args.bucket,
        prefix=args.prefix,
    )
    final.wait()
    print(f"Fetch the model with: dogclf sagemaker download {final.name} --out models/{final.name}")


def _tune_local(args: argparse.Namespace, spec: Any, space: Any, environ: Mapping[str, str]) -> int:
    import dataclasses

    from dogclf.sagemaker.local import run_spec_locally
    from dogclf.sagemaker.local_tuning import run_tuning_locally

    if args.out is None:
        raise ValueError("--local needs --out DIR: where the trials, best_params.json and trials.csv go")
    result = run_tuning_locally(
        spec,
        space,
        data=args.data,
        out_dir=args.out,
        max_jobs=args.max_jobs,
        features=args.features,
        seed=args.seed,
        objective=args.objective_metric,
        objective_type=args.objective_type,
        environ=environ,
    )
    mean = sum(result.trial_seconds) / len(result.trial_seconds)
    print(f"{len(result.records)} trials, {mean:.1f} s per trial on average; results in {args.out}")
    if args.train_best:
        best = dataclasses.replace(spec, hyperparameters=result.best_hyperparameters)
        final = run_spec_locally(best, data=args.data, out_dir=Path(args.out) / "best", environ=environ)
        print(f"Final model trained with the best values: {final.model_tar}")
    return 0


def _cmd_deploy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.aws import Aws, resolve_role
    from dogclf.sagemaker.endpoint import deploy

    role = resolve_role(args.role, environ)
    aws = Aws.from_environ(environ, region=args.region)
    endpoint = deploy(
        args.model,
        aws=aws,
        role=role,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        serverless_memory=args.serverless,
        max_concurrency=args.max_concurrency,
        endpoint_name=args.endpoint_name,
        bucket=args.bucket,
        prefix=args.prefix,
        wait=args.wait,
        top_k=args.top_k,
    )
    print(f"Query it with: dogclf sagemaker invoke {endpoint.name} photo.jpg")
    print(f"Remove it (it bills while it exists) with: dogclf sagemaker delete {endpoint.name}")
    return 0


def _cmd_invoke(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.endpoint import invoke
    from dogclf.serving.answers import print_predictions

    aws = Aws.from_environ(environ, region=args.region)
    return print_predictions(invoke(aws, args.endpoint, args.images, top_k=args.top_k), as_json=args.json)


def _cmd_delete(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.endpoint import delete_endpoint

    delete_endpoint(Aws.from_environ(environ, region=args.region), args.endpoint)
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "deploy": _cmd_deploy,
    "invoke": _cmd_invoke,
    "delete": _cmd_delete,
    "train": _cmd_train,
    "tune": _cmd_tune,
    "download": _cmd_download,
}


def run_sagemaker(args: argparse.Namespace) -> int:
    """Runs ``dogclf sagemaker COMMAND``; returns the exit code."""
    from dogclf.sagemaker.followup import FOLLOWUP_COMMANDS
    from dogclf.sagemaker.scaleout_cli import SCALEOUT_COMMANDS

    return {**_COMMANDS, **FOLLOWUP_COMMANDS, **SCALEOUT_COMMANDS}[args.sagemaker_command](args, args.environ)


def print_json(data: Any) -> None:
    """Prints ``data`` as indented JSON."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
