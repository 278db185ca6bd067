"""Launching a SageMaker training job that runs ``dogclf train``, following it, and fetching its model.

:func:`build_request` is a pure function from a :class:`TrainingJobSpec` and the job's S3 locations to the exact
CreateTrainingJob request (what ``--dry-run`` prints and what is sent); :func:`launch_training_job` uploads the data
and the source directory, then sends it through the SageMaker SDK v3 (``sagemaker.core.resources.TrainingJob``).
The job runs the framework container's script mode: the AWS PyTorch training image's toolkit unpacks
``sagemaker_submit_directory`` and runs ``sagemaker_program`` (``train.py``, :mod:`dogclf.sagemaker.entry`) with the
hyperparameters as flags. S3 layout under ``s3://BUCKET/PREFIX/``::

    data/<folder name>-<content digest>/...    a local --data folder, mirrored (see dogclf.sagemaker.inputs)
    jobs/<job>/source/sourcedir.tar.gz         dogclf's source, a plugin backbone's package, train.py
    jobs/<job>/output/model.tar.gz             the model directory, deployable as it is (SageMaker writes it)
    jobs/<job>/output/output.tar.gz            history, evaluation report, plots
    jobs/<job>/checkpoints/                    per-epoch checkpoints and the feature cache (synced while it runs)
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.errors import DatasetError, DogclfError
from dogclf.sagemaker.inputs import upload_inputs
from dogclf.sagemaker.model_archive import unpack_model
from dogclf.sagemaker.request_check import RequestError, validate_request  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.job_settings import JobSettings
    from dogclf.sagemaker.s3 import FolderManifest, S3Uri

__all__ = [
    "DEFAULT_PREFIX",
    "TERMINAL_STATUSES",
    "TrainingJob",
    "TrainingJobFailed",
    "TrainingJobSpec",
    "build_request",
    "channel",
    "check_local_data",
    "format_request",
    "job_name",
    "launch_training_job",
    "local_data_manifest",
    "plan_launch",
    "plan_request",
    "validate_request",
    "unpack_model",
    "upload_inputs",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "dogclf"
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
_NAME_OK = re.compile(r"[^a-zA-Z0-9-]+")


class TrainingJobFailed(DogclfError, RuntimeError):
    """A training job that ended Failed or Stopped: its failure reason and last log lines."""


@dataclass(frozen=True, kw_only=True)
class TrainingJobSpec:
    """What a training job runs on, apart from where its data and code live.

    Attributes:
        backbone: The backbone to train (a plugin's package is shipped with the code).
        hyperparameters: ``dogclf train`` options as SageMaker hyperparameters (``{"lr": "0.001", ...}``).
        instance_type: The training instance type, e.g. ``ml.m5.large`` or ``ml.g5.xlarge``.
        instance_count: Instances; more than one (or a multi-GPU instance) runs under torchrun.
        volume_size_gb: The instance's storage (data, checkpoints, feature cache).
        spot: Managed spot training; an interrupted job restarts and resumes from its checkpoints.
        max_runtime: Seconds the job may train.
        max_wait: With ``spot``: seconds it may wait for spot capacity and train together (default 2 x runtime).
        framework_version: The AWS PyTorch training image's version.
        base_name: Prefix of generated job names.
        names_file: A ``--names`` file shipped with the code.
        environment: Extra environment variables of the container.
        extra: Request fields added as they are (``DebugHookConfig``, ``TensorBoardOutputConfig``, ...).
        settings: VPC, network isolation, tags and KMS keys (:class:`~dogclf.sagemaker.job_settings.JobSettings`).
    """

    backbone: str
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    volume_size_gb: int = 30
    spot: bool = False
    max_runtime: int = 24 * 3600
    max_wait: int | None = None
    framework_version: str = ""
    base_name: str = DEFAULT_PREFIX
    names_file: Path | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    settings: JobSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instance_count, int) or self.instance_count < 1:
            raise ValueError(f"--instance-count must be an integer >= 1, got {self.instance_count!r}")
        if not isinstance(self.max_runtime, int) or self.max_runtime < 1:
            raise ValueError(f"--max-runtime must be a number of seconds >= 1, got {self.max_runtime!r}")
        if self.max_wait is not None and self.max_wait < self.max_runtime:
            raise ValueError(
                f"--max-wait ({self.max_wait} s) must be at least --max-runtime ({self.max_runtime} s): it counts "
                "the time spent waiting for spot capacity plus the training time"
            )
        if self.max_wait is not None and not self.spot:
            raise ValueError("--max-wait only applies to managed spot training: add --spot, or drop --max-wait")

    def wait_seconds(self) -> int:
        """``MaxWaitTimeInSeconds`` of a spot job."""
        return self.max_wait if self.max_wait is not None else 2 * self.max_runtime


def job_name(base: str, backbone: str, *, now: datetime | None = None) -> str:
    """A unique job name: ``<base>-<backbone>-<UTC time to the second>-<4 random hex>`` (at most 63 characters)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    tag = secrets.token_hex(2)
    stem = _NAME_OK.sub("-", f"{base}-{backbone}").strip("-")
    return f"{stem[: 63 - len(stamp) - len(tag) - 2]}-{stamp}-{tag}"


def channel(name: str, uri: str) -> dict[str, Any]:
    """One ``InputDataConfig`` entry: the S3 prefix ``uri`` copied to ``/opt/ml/input/data/<name>`` (File mode)."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def distribution_hyperparameters(instance_count: int, gpus: int) -> dict[str, str]:
    """The script-mode flag that makes the PyTorch container launch torchrun (several hosts or GPUs), else none."""
    if instance_count > 1 or gpus > 1:
        return {"sagemaker_torch_distributed_enabled": "true"}
    return {}


def build_request(
    spec: TrainingJobSpec,
    *,
    name: str,
    role: str,
    image: str,
    region: str,
    source_uri: str,
    channels: Mapping[str, str],
    output_uri: str,
    checkpoint_uri: str,
    gpus: int = 0,
) -> dict[str, Any]:
    """The CreateTrainingJob request of ``spec`` (every value as SageMaker's API takes it).

    Args:
        spec: What to run.
        name: The job's name.
        role: The execution role ARN.
        image: The training image URI.
        region: The region (told to the container's toolkit).
        source_uri: Where ``sourcedir.tar.gz`` is.
        channels: Channel name -> S3 prefix (``training``, or ``train``/``valid``/``test``; ``features``).
        output_uri: ``S3OutputPath``; SageMaker writes ``<output_uri>/<name>/output/model.tar.gz``.
        checkpoint_uri: Where ``/opt/ml/checkpoints`` is synced.
        gpus: GPUs per instance (several run under torchrun).
    """
    from dogclf.sagemaker.entry import ENTRY_SCRIPT
    from dogclf.sagemaker.metrics import metric_definitions

    hyperparameters = {
        **dict(spec.hyperparameters),
        "backbone": spec.backbone,
        **distribution_hyperparameters(spec.instance_count, gpus),
        "sagemaker_program": json.dumps(ENTRY_SCRIPT),
        "sagemaker_submit_directory": json.dumps(source_uri),
        "sagemaker_region": json.dumps(region),
    }
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.wait_seconds()
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(),
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "HyperParameters": hyperparameters,
        "InputDataConfig": [channel(key, uri) for key, uri in channels.items()],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "CheckpointConfig": {"S3Uri": checkpoint_uri, "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [{"Key": "dogclf:backbone", "Value": spec.backbone}],
    }
    if spec.environment:
        request["Environment"] = dict(spec.environment)
    if spec.settings is not None:
        spec.settings.apply(request)
    request.update(spec.extra)
    return request


def local_data_manifest(data: str, hyperparameters: Mapping[str, str]) -> FolderManifest | None:
    """A local data folder's manifest, after :func:`check_local_data`; ``None`` for an ``s3://`` prefix."""
    if data.startswith("s3://"):
        return None
    from dogclf.sagemaker.s3 import folder_manifest

    check_local_data(Path(data), hyperparameters)
    return folder_manifest(data)


def check_local_data(folder: Path, hyperparameters: Mapping[str, str]) -> None:
    """Refuses, before anything is uploaded, a data folder that is missing or has no validation data.

    Raises:
        DatasetError: Saying what to pass instead.
    """
    if not folder.is_dir():
        raise DatasetError(f"Data folder {str(folder)!r} does not exist.")
    has_valid = (folder / "train").is_dir() and any((folder / v).is_dir() for v in ("valid", "val"))
    if not has_valid and "valid-fraction" not in hyperparameters:
        raise DatasetError(
            f"{str(folder)!r} has no train/ and valid/ folders; pass --valid-fraction 0.2 to hold out 20% of the "
            "training images for validation inside the job."
        )


@dataclass
class TrainingJob:
    """A launched training job.

    Attributes:
        name: The job's name.
        aws: The AWS context it was launched with.
        request: The CreateTrainingJob request (``None`` for a job attached by name).
    """

    name: str
    aws: Aws
    request: dict[str, Any] | None = None

    @classmethod
    def attach(cls, name: str, aws: Any = None) -> TrainingJob:
        """The job called ``name``, launched earlier (by this or any other program), checked to exist.

        Args:
            name: The training job's name.
            aws: An :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session``, or ``None`` (from the environment).

        Raises:
            AwsError: No such job in the region (or it could not be read).
        """
        from dogclf.sagemaker.aws import as_aws

        job = cls(name, as_aws(aws))
        job.describe()
        return job

    @property
    def status(self) -> str:
        """``TrainingJobStatus`` now: InProgress, Completed, Failed, Stopping or Stopped."""
        return str(self.describe()["TrainingJobStatus"])

    def logs(self) -> list[str]:
        """The job's CloudWatch log lines so far (every instance's stream; empty before the job starts writing)."""
        from dogclf.sagemaker.logs import LogFollower

        return LogFollower(self.aws, LOG_GROUP, f"{self.name}/").poll()

    def stop(self) -> bool:
        """Asks SageMaker to stop the job; ``False`` when it had already ended (nothing to stop)."""
        from dogclf.sagemaker.aws import aws_errors

        if self.status in (*TERMINAL_STATUSES, "Stopping"):
            return False
        with aws_errors(f"Stopping training job {self.name}"):
            self.aws.client("sagemaker").stop_training_job(TrainingJobName=self.name)
        return True

    def describe(self) -> dict[str, Any]:
        """DescribeTrainingJob's answer."""
        from dogclf.sagemaker.aws import aws_errors

        with aws_errors(f"Reading training job {self.name}"):
            return dict(self.aws.client("sagemaker").describe_training_job(TrainingJobName=self.name))

    @property
    def console_url(self) -> str:
        """The job's page in the SageMaker console."""
        return self.aws.console_url(f"/jobs/{self.name}")

    @property
    def logs_url(self) -> str:
        """The job's log streams in the CloudWatch console."""
        region = self.aws.region
        return (
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logStream:"
            f"group={LOG_GROUP};prefix={self.name}/;streamFilter=typeLogStreamPrefix"
        )

    @deprecated_log
    def wait(
        self,
        *,
        logs: bool = True,
        poll: float = 20.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follows the job's status (and its CloudWatch log lines) until it ends; returns the final description.

        Raises:
            TrainingJobFailed: It ended Failed or Stopped (its reason and last log lines).
            TimeoutError: ``timeout`` seconds passed first (the job keeps running).
        """
        from dogclf.sagemaker.logs import LogFollower

        follower = LogFollower(self.aws, LOG_GROUP, f"{self.name}/")
        started = time.monotonic()
        shown = 0
        while True:
            description = self.describe()
            transitions = description.get("SecondaryStatusTransitions") or []
            for transition in transitions[shown:]:
                logger.info(
                    f"[{self.name}] {transition.get('Status')}: {transition.get('StatusMessage', '')}".rstrip(": ")
                )
            shown = len(transitions)
            for line in follower.poll() if logs else ():
                logger.info(line)
            status = description["TrainingJobStatus"]
            if status in TERMINAL_STATUSES:
                for line in follower.poll() if logs else ():
                    logger.info(line)
                break
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"Training job {self.name} is still {status} after {timeout:.0f} s")
            time.sleep(poll)
        if status != "Completed":
            reason = description.get("FailureReason") or description.get("SecondaryStatus") or status
            last = "\n".join(f"  {line}" for line in follower.lines[-20:]) or "  (no log lines)"
            raise TrainingJobFailed(f"Training job {self.name} {status.lower()}: {reason}\nLast log lines:\n{last}")
        logger.info(f"[{self.name}] Completed; model: {description['ModelArtifacts']['S3ModelArtifacts']}")
        billed = billable_line(description)
        if billed:
            logger.info(f"[{self.name}] {billed}")
        return description

    def model_artifact(self) -> S3Uri:
        """Where the job's ``model.tar.gz`` is (the job must have completed)."""
        from dogclf.sagemaker.s3 import S3Uri

        description = self.describe()
        if description["TrainingJobStatus"] != "Completed":
            raise TrainingJobFailed(
                f"Training job {self.name} is {description['TrainingJobStatus']}, not Completed: it has no model yet"
                + (f" ({description['FailureReason']})" if description.get("FailureReason") else "")
            )
        return S3Uri.parse(description["ModelArtifacts"]["S3ModelArtifacts"])

    def download(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Downloads and unpacks the job's ``model.tar.gz`` into a model directory ``dogclf predict`` loads.

        Nothing is written to ``out_dir`` unless the whole archive unpacks into a loadable model.
        """
        from dogclf.sagemaker.s3 import download_file

        uri = self.model_artifact()
        with tempfile.TemporaryDirectory(prefix="dogclf-download-") as tmp:
            archive = download_file(self.aws, uri, Path(tmp) / "model.tar.gz")
            return unpack_model(archive, out_dir, overwrite=overwrite, source=str(uri))


def plan_request(
    spec: TrainingJobSpec,
    data: str,
    *,
    region: str,
    role: str,
    bucket: str,
    prefix: str,
    name: str,
    features: str | None = None,
    tuning_job: str | None = None,
    manifest: FolderManifest | None = None,
) -> dict[str, Any]:
    """The request a launch sends: the job's S3 locations under ``s3://bucket/prefix/`` and its image.

    A local ``data`` folder's channel is named by its content (:func:`dogclf.sagemaker.inputs.data_uri`; pass its
    ``manifest`` when made already), a local ``features`` folder's by its name. With ``tuning_job`` it is the
    template of that tuning job's trials: source, outputs and checkpoints under ``tuning/<tuning_job>/`` (each
    trial's model at ``tuning/<tuning_job>/trials/<trial>/output/model.tar.gz``).

    Raises:
        DatasetError: A local ``features`` folder that does not exist.
    """
    from dogclf.sagemaker.images import gpus_per_instance, training_image
    from dogclf.sagemaker.inputs import data_uri, features_uri
    from dogclf.sagemaker.s3 import S3Uri

    image = training_image(region, spec.instance_type, spec.framework_version or _default_version())
    root = S3Uri(bucket, prefix.strip("/"))
    channels = {"training": data_uri(root, data, manifest)}
    cache = features_uri(root, features)
    if cache is not None:
        channels["features"] = cache
    home = root.join("jobs", name) if tuning_job is None else root.join("tuning", tuning_job)
    return build_request(
        spec,
        name=name,
        role=role,
        image=image,
        region=region,
        source_uri=str(home.join("source", "sourcedir.tar.gz")),
        channels=channels,
        output_uri=str(root.join("jobs") if tuning_job is None else home.join("trials")),
        checkpoint_uri=str(home.join("checkpoints")),
        gpus=gpus_per_instance(spec.instance_type, region),
    )


def plan_launch(
    spec: TrainingJobSpec,
    data: str,
    *,
    aws: Aws,
    role: str,
    bucket: str | None,
    prefix: str,
    name: str,
    features: str | None,
    dry_run: bool,
    tuning_job: str | None = None,
) -> tuple[dict[str, Any], FolderManifest | None, str]:
    """What a launch plans before it uploads anything: the request, the data folder's manifest, the bucket.

    The bucket is ``bucket``, else the SDK's default one (created unless ``dry_run``). See :func:`plan_request`.

    Raises:
        DatasetError: A local data or features folder that is missing, or data without a validation split.
    """
    manifest = local_data_manifest(data, spec.hyperparameters)
    chosen = bucket or (f"sagemaker-{aws.region}-{aws.account()}" if dry_run else aws.default_bucket())
    request = plan_request(
        spec,
        data,
        region=aws.region,
        role=role,
        bucket=chosen,
        prefix=prefix,
        name=name,
        features=features,
        tuning_job=tuning_job,
        manifest=manifest,
    )
    return request, manifest, chosen


def _create_training_job(aws: Aws, request: Mapping[str, Any], *, debugger: bool) -> None:
    """Sends CreateTrainingJob; an account that may not use Debugger is told so plainly."""
    import botocore.exceptions

    from dogclf.sagemaker.aws import AwsError, aws_errors

    name = request["TrainingJobName"]
    with aws_errors(f"Creating training job {name}"):
        try:
            aws.client("sagemaker").create_training_job(**request)
        except botocore.exceptions.ClientError as exc:
            from dogclf.diagnostics.sagemaker_requests import debugger_unavailable_message, is_debugger_unavailable

            if debugger and is_debugger_unavailable(exc):
                message = exc.response.get("Error", {}).get("Message", "")
                raise AwsError(debugger_unavailable_message(message)) from None
            raise


def _diagnostics(
    request: Mapping[str, Any],
    home: str,
    debugger: bool,
    tensorboard: str | None,
    *,
    region: str,
    framework_version: str,
) -> dict[str, Any]:
    """The Debugger/Profiler and TensorBoard fields of a request (empty when neither is asked for).

    Raises:
        DebuggerUnsupportedError: ``debugger`` for an image without smdebug (:mod:`dogclf.sagemaker.debugger`).
    """
    fields: dict[str, Any] = {}
    if debugger:
        from dogclf.sagemaker.debugger import debugger_fields

        distributed = "sagemaker_torch_distributed_enabled" in request["HyperParameters"]
        fields.update(
            debugger_fields(region, f"{home}/debugger", framework_version=framework_version, distributed=distributed)
        )
    if tensorboard is not None:
        from dogclf.diagnostics.sagemaker_requests import tensorboard_output_config

        fields["TensorBoardOutputConfig"] = tensorboard_output_config(
            f"{home}/tensorboard" if tensorboard == "auto" else tensorboard
        )
    return fields


def _default_version() -> str:
    from dogclf.sagemaker.images import TRAINING_FRAMEWORK_VERSION

    return TRAINING_FRAMEWORK_VERSION


@deprecated_log
def launch_training_job(
    spec: TrainingJobSpec,
    data: str | os.PathLike[str],
    *,
    aws: Aws | Any = None,
    role: str,
    bucket: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    name: str | None = None,
    features: str | None = None,
    debugger: bool = False,
    tensorboard: str | None = None,
    dry_run: bool = False,
) -> TrainingJob:
    """Uploads the data and the code, then creates the training job (or, with ``dry_run``, only builds the request).

    Args:
        spec: What to run.
        data: A local data folder (mirrored to ``s3://BUCKET/PREFIX/data/<name>-<content digest>/``) or an
            ``s3://`` prefix.
        aws: The AWS context: an :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session`` or ``None`` (the
            environment).
        role: The execution role ARN.
        bucket: The bucket (default: the SDK's ``sagemaker-<region>-<account>``, created when missing).
        prefix: Key prefix of everything this job writes.
        name: The job name (default: unique, see :func:`job_name`).
        features: Backbone features (a feature cache) to mount as the ``features`` channel: an ``s3://`` prefix, or
            a local folder uploaded (after the request is checked) to ``s3://BUCKET/PREFIX/features/<name>/``.
        debugger: Attach SageMaker Debugger's hook, built-in rules and Profiler (:mod:`dogclf.diagnostics`); refused
            for images without smdebug, and without hook for distributed jobs (:mod:`dogclf.sagemaker.debugger`).
        tensorboard: ``"auto"`` or an ``s3://`` prefix: the job logs TensorBoard scalars and SageMaker uploads them
            there (``auto``: ``s3://BUCKET/PREFIX/jobs/<job>/tensorboard``).
        dry_run: Build and return the request without uploading or creating anything.

    Returns:
        The job (``request`` holds what was, or would be, sent).

    Raises:
        DatasetError: A local data folder that does not exist or has no validation split (and no valid-fraction).
        UnknownInstanceTypeError: An instance type SageMaker does not offer.
        DebuggerUnsupportedError: ``debugger`` for a training image without smdebug.
        AwsError: An upload or the CreateTrainingJob call failed.
    """
    from dogclf.sagemaker.aws import as_aws

    aws = as_aws(aws)
    data = str(data)
    job = name or job_name(spec.base_name, spec.backbone)
    request, manifest, chosen_bucket = plan_launch(
        spec, data, aws=aws, role=role, bucket=bucket, prefix=prefix, name=job, features=features, dry_run=dry_run
    )
    home = f"s3://{chosen_bucket}/{prefix.strip('/')}/jobs/{job}"
    version = spec.framework_version or _default_version()
    request.update(_diagnostics(request, home, debugger, tensorboard, region=aws.region, framework_version=version))
    validate_request("CreateTrainingJob", request)
    if dry_run:
        return TrainingJob(job, aws, request)
    upload_inputs(spec, data, aws, request, manifest=manifest, features=features)
    _create_training_job(aws, request, debugger=debugger)
    created = TrainingJob(job, aws, request)
    logger.info(f"Launched training job {job}")
    logger.info(f"  status and metrics: {created.console_url}")
    logger.info(f"  logs: {created.logs_url}")
    return created


def format_request(request: Mapping[str, Any]) -> str:
    """The request as indented JSON (what ``--dry-run`` prints)."""
    return json.dumps(request, indent=2, sort_keys=False)


def hyperparameter_summary(hyperparameters: Mapping[str, str], skip: Sequence[str] = ()) -> str:
    """``lr=0.001 batch-size=16 ...`` without the script-mode keys."""
    return " ".join(f"{k}={v}" for k, v in hyperparameters.items() if not k.startswith("sagemaker_") and k not in skip)


def billable_line(description: Mapping[str, Any]) -> str:
    """``billable 1234 s x 1 instance(s) (training 1500 s; managed spot saved 18%)`` from a DescribeTrainingJob answer.

    What AWS bills is ``BillableTimeInSeconds`` times the instance count; with managed spot training the saving is
    ``1 - BillableTimeInSeconds / TrainingTimeInSeconds`` (the DescribeTrainingJob reference). Empty when the answer
    has no billable time.
    """
    billable = description.get("BillableTimeInSeconds")
    if billable is None:
        return ""
    count = (description.get("ResourceConfig") or {}).get("InstanceCount", 1)
    training = description.get("TrainingTimeInSeconds")
    line = f"billable {billable} s x {count} instance(s)"
    if training:
        line += f" (training {training} s"
        if description.get("EnableManagedSpotTraining") and billable < training:
            line += f"; managed spot saved {1 - billable / training:.0%}"
        line += ")"
    return line + "; the rate per instance-hour is on https://aws.amazon.com/sagemaker/pricing/"
