"""``dogclf sagemaker status|logs|wait|stop JOB``: a training or tuning job launched earlier, attached by name.

A launch without ``--wait`` prints the job's name; these commands pick it up from any shell, later: ``status`` (the
state, final metrics, billable time, a tuning job's trial counts and best trial), ``logs`` (the CloudWatch lines,
``--follow`` until it ends), ``wait`` (until it ends; a tuning job's results written with ``--out``) and ``stop``.
The name is looked up as a training job first, then as a tuning job.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.training_job import TrainingJob
    from dogclf.sagemaker.tuning_job import TuningJob

__all__ = [
    "FOLLOWUP_COMMANDS",
    "JobNotFoundError",
    "add_followup_parsers",
    "find_job",
    "training_status_lines",
    "tuning_status_lines",
]

logger = logging.getLogger(__name__)

_EXIT_STILL_RUNNING = 1


class JobNotFoundError(DogclfError, LookupError):
    """No training job and no tuning job of that name in the region."""


def add_followup_parsers(commands: Any) -> None:
    """Adds ``status``, ``logs``, ``wait`` and ``stop`` to the ``dogclf sagemaker`` subparsers."""
    parsers = {
        "status": "show a training or tuning job's state, final metrics, billable time and best trial",
        "logs": "print a training job's CloudWatch log lines (a tuning job's: its best trial's)",
        "wait": "wait until a training or tuning job ends, following its status (and log lines)",
        "stop": "stop a training or tuning job (and the tuning job's running trials)",
    }
    for name, text in parsers.items():
        p: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("job", metavar="JOB", help="the training or tuning job's name (printed at launch)")
        p.add_argument("--region", default=None, help="AWS region (default $AWS_REGION or ~/.aws/config)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print SageMaker's description as JSON")
        if name in ("logs", "wait"):
            p.add_argument("--poll", type=float, default=20.0, help="seconds between checks (default 20)")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep printing new lines until the job ends")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
            p.add_argument("--no-logs", action="store_true", help="status changes only, no log lines")
            p.add_argument(
                "--out", type=Path, default=None, help="tuning job: write best_params.json, trials.csv, history.png"
            )


def _exists(aws: Aws, what: str, call: Callable[[], Any]) -> bool:
    import botocore.exceptions

    from dogclf.sagemaker.aws import aws_errors, is_not_found

    with aws_errors(what):
        try:
            call()
        except botocore.exceptions.ClientError as exc:
            if is_not_found(exc):
                return False
            raise
    return True


def find_job(aws: Aws, name: str) -> TrainingJob | TuningJob:
    """The training job, else the tuning job, called ``name``.

    Raises:
        JobNotFoundError: Neither exists in the region.
        AwsError: SageMaker could not be asked (credentials, network, permissions).
    """
    from dogclf.sagemaker.training_job import TrainingJob
    from dogclf.sagemaker.tuning_job import TuningJob

    client = aws.client("sagemaker")
    if _exists(aws, f"Looking up job {name}", lambda: client.describe_training_job(TrainingJobName=name)):
        return TrainingJob(name, aws)
    if len(name) <= 32 and _exists(  # longer names cannot be tuning jobs
        aws,
        f"Looking up job {name}",
        lambda: client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
    ):
        return TuningJob.attach(name, aws)
    raise JobNotFoundError(
        f"There is no training job and no tuning job named {name!r} in {aws.region}. Check the name the launch "
        "printed and --region; `aws sagemaker list-training-jobs` and `aws sagemaker "
        "list-hyper-parameter-tuning-jobs` list them."
    )


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if isinstance(value, datetime) else str(value)


def training_status_lines(description: Mapping[str, Any]) -> list[str]:
    """What ``status`` prints for a training job (from DescribeTrainingJob's answer)."""
    from dogclf.sagemaker.training_job import billable_line

    name = description["TrainingJobName"]
    status = description["TrainingJobStatus"]
    secondary = description.get("SecondaryStatus")
    lines = [f"Training job {name}: {status}" + (f" ({secondary})" if secondary and secondary != status else "")]
    resources = description.get("ResourceConfig") or {}
    spot = ", managed spot" if description.get("EnableManagedSpotTraining") else ""
    lines.append(f"  instances: {resources.get('InstanceCount', 1)} x {resources.get('InstanceType', '?')}{spot}")
    times = [
        f"{label} {_when(description[key])}"
        for label, key in (("created", "CreationTime"), ("started", "TrainingStartTime"), ("ended", "TrainingEndTime"))
        if description.get(key)
    ]
    if times:
        lines.append("  " + ", ".join(times))
    metrics = description.get("FinalMetricDataList") or []
    if metrics:
        lines.append("  final metrics: " + " ".join(f"{m['MetricName']}={m['Value']:g}" for m in metrics))
    billed = billable_line(description)
    if billed:
        lines.append(f"  {billed}")
    if description.get("FailureReason"):
        lines.append(f"  failure reason: {description['FailureReason']}")
    artifact = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if status == "Completed" and artifact:
        lines.append(f"  model: {artifact}")
        lines.append(f"Fetch it with: dogclf sagemaker download {name} --out models/{name}")
    elif status in ("InProgress", "Stopping"):
        lines.append(
            f"Follow it with: dogclf sagemaker logs {name} --follow; stop it with: dogclf sagemaker stop {name}"
        )
    return lines


def tuning_status_lines(description: Mapping[str, Any]) -> list[str]:
    """What ``status`` prints for a tuning job (from DescribeHyperParameterTuningJob's answer)."""
    from dogclf.sagemaker.hyperparameters import unquote

    name = description["HyperParameterTuningJobName"]
    status = description["HyperParameterTuningJobStatus"]
    config = description.get("HyperParameterTuningJobConfig") or {}
    objective = config.get("HyperParameterTuningJobObjective") or {}
    limits = config.get("ResourceLimits") or {}
    lines = [
        f"Tuning job {name}: {status}",
        f"  {config.get('Strategy', '?')} search of {objective.get('MetricName', '?')} "
        f"({objective.get('Type', '?')}); {limits.get('MaxNumberOfTrainingJobs', '?')} trials, "
        f"{limits.get('MaxParallelTrainingJobs', '?')} at a time",
    ]
    counts = description.get("TrainingJobStatusCounters") or {}
    lines.append("  trials: " + (", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v) or "none yet"))
    runtime = (description.get("ConsumedResources") or {}).get("RuntimeInSeconds")
    if runtime is not None:
        lines.append(f"  trials' runtime so far: {runtime} s (each trial bills as a training job)")
    best = description.get("BestTrainingJob") or {}
    if best.get("TrainingJobName"):
        final = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        value = f" {final.get('MetricName')}={final['Value']:g}" if "Value" in final else ""
        tuned = " ".join(f"{k}={unquote(str(v))}" for k, v in (best.get("TunedHyperParameters") or {}).items())
        lines.append(f"  best trial: {best['TrainingJobName']}{value} | {tuned}".rstrip(" |"))
        lines.append(f"Its logs and model: dogclf sagemaker logs|download {best['TrainingJobName']}")
    if description.get("FailureReason"):
        lines.append(f"  failure reason: {description['FailureReason']}")
    if status in ("InProgress", "Stopping"):
        lines.append(f"Wait for it with: dogclf sagemaker wait {name} --out DIR; stop it: dogclf sagemaker stop {name}")
    return lines


def _aws(args: argparse.Namespace, environ: Mapping[str, str]) -> Aws:
    from dogclf.sagemaker.aws import Aws

    return Aws.from_environ(environ, region=args.region)


def _is_training(job: Any) -> bool:
    from dogclf.sagemaker.training_job import TrainingJob

    return isinstance(job, TrainingJob)


def _cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dogclf._json import dumps

    job = find_job(_aws(args, environ), args.job)
    description = job.describe()
    description.pop("ResponseMetadata", None)
    if args.json:
        print(dumps(description, indent=2, default=str))
        return 0
    lines = training_status_lines(description) if _is_training(job) else tuning_status_lines(description)
    print("\n".join(lines))
    return 0


def _cmd_logs(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import sys

    job = find_job(_aws(args, environ), args.job)
    if not _is_training(job):
        tuning = job
        job = tuning.best_training_job()  # type: ignore[union-attr]
        logger.info(f"Logs of {job.name}, the best trial of tuning job {tuning.name} (another trial: logs TRIAL_NAME)")
    if args.follow:
        job.wait(poll=args.poll)  # type: ignore[union-attr]
        return 0
    lines = job.logs()  # type: ignore[union-attr]
    for line in lines:
        logger.info(line)
    if not lines:
        print(f"No log lines yet for {job.name} ({job.status}).", file=sys.stderr)  # type: ignore[union-attr]
    return 0


def _cmd_wait(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import sys

    aws = _aws(args, environ)
    job = find_job(aws, args.job)
    try:
        if _is_training(job):
            job.wait(poll=args.poll, timeout=args.timeout, logs=not args.no_logs)  # type: ignore[call-arg]
            print(f"Fetch the model with: dogclf sagemaker download {job.name} --out models/{job.name}")
            return 0
        description = job.wait(poll=args.poll, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"{exc}; it keeps running: `dogclf sagemaker wait {job.name}` again, or stop it.", file=sys.stderr)
        return _EXIT_STILL_RUNNING
    description.pop("ResponseMetadata", None)
    print("\n".join(tuning_status_lines(description)[2:]))
    if description["HyperParameterTuningJobStatus"] == "Failed":
        from dogclf.sagemaker.tuning_job import TuningError

        raise TuningError(f"Tuning job {job.name} failed: {description.get('FailureReason', 'no reason given')}")
    if args.out is not None:
        _write_results(aws, job, description, args.out)  # type: ignore[arg-type]
    return 0


def _write_results(aws: Aws, job: TuningJob, description: Mapping[str, Any], out: Path) -> None:
    from dogclf.sagemaker.tuning_job import TuningError, describe_trials, write_tuning_results

    if job.space is None:
        raise TuningError(f"Tuning job {job.name} searches no dogclf hyperparameters: there is nothing to write")
    objective = description["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    backbone = job.training_request["HyperParameters"].get("backbone", "")
    records = describe_trials(aws, job.name, job.space)
    write_tuning_results(out, records, space=job.space, metric=objective, job_name=job.name, backbone=backbone)


def _cmd_stop(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    job = find_job(_aws(args, environ), args.job)
    kind = "Training job" if _is_training(job) else "Tuning job"
    if not job.stop():
        print(f"{kind} {job.name} is already {job.status}: nothing to stop.")
        return 0
    trials = "" if _is_training(job) else " and its running trials"
    print(
        f"Asked SageMaker to stop {kind.lower()} {job.name}{trials}; it bills until it is Stopped "
        f"(check with: dogclf sagemaker status {job.name})."
    )
    return 0


FOLLOWUP_COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "status": _cmd_status,
    "logs": _cmd_logs,
    "wait": _cmd_wait,
    "stop": _cmd_stop,
}
