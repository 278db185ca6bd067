"""Running a training job here, the way the SageMaker PyTorch container runs it, without Docker.

:func:`run_local` lays out a temporary ``/opt/ml`` tree (``input/config/*.json``, ``input/data/<channel>``,
``model/``, ``output/``, ``checkpoints/``), points the real SageMaker training toolkit at it with
``SAGEMAKER_BASE_DIR`` and runs its ``train`` command, as the container's entry point does. The toolkit unpacks the
source directory into ``code/``, installs its ``requirements.txt`` and runs ``train.py`` with the job's
hyperparameters as flags and ``SM_*`` variables. Afterwards the job's artifacts are left as SageMaker leaves them:
``OUT/model.tar.gz`` (the model directory) and ``OUT/output.tar.gz`` (the output data), plus ``OUT/checkpoints/``
(what SageMaker keeps in the checkpoint S3 URI: rerunning into the same ``OUT`` resumes like a restarted job),
``OUT/log.txt`` and ``OUT/metrics.json`` (the final value of every metric definition, as DescribeTrainingJob's
``FinalMetricDataList`` has them).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.training_job import TrainingJobSpec

__all__ = [
    "LocalJobError",
    "LocalResult",
    "emulated_hyperparameters",
    "parse_metrics",
    "run_local",
    "run_request",
    "run_spec_locally",
]

logger = logging.getLogger(__name__)

# The PyTorch training container sets this, so the toolkit hands control to the PyTorch toolkit (which launches
# torchrun for distributed jobs); used when sagemaker-pytorch-training is installed.
PYTORCH_TRAINING_MODULE = "sagemaker_pytorch_container.training:main"


class LocalJobError(DogclfError, RuntimeError):
    """A local job that failed: its failure reason and last log lines."""


@dataclass
class LocalResult:
    """What :func:`run_local` left in its output folder.

    Attributes:
        out_dir: The output folder.
        model_tar: ``model.tar.gz``.
        output_tar: ``output.tar.gz``.
        metrics: Final value of each metric definition found in the log.
        seconds: Wall time of the job.
        log: The job's log lines.
    """

    out_dir: Path
    model_tar: Path
    output_tar: Path
    metrics: dict[str, float]
    seconds: float
    log: list[str] = field(default_factory=list, repr=False)


def parse_metrics(lines: Sequence[str], definitions: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """The last value each metric definition's regex captures in the log lines (as SageMaker reports them)."""
    found: dict[str, float] = {}
    for definition in definitions:
        pattern = re.compile(definition["Regex"])
        for line in lines:
            for match in pattern.finditer(line):
                found[definition["Name"]] = float(match.group(1))
    return found


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _layout(
    base: Path,
    *,
    hyperparameters: Mapping[str, str],
    channels: Mapping[str, Path],
    checkpoints: Path,
    instance_type: str,
) -> None:
    config = base / "input" / "config"
    _write_json(config / "hyperparameters.json", dict(hyperparameters))
    _write_json(
        config / "resourceconfig.json",
        {
            "current_host": "localhost",  # another name makes the toolkit wait for DNS forever
            "hosts": ["localhost"],
            "network_interface_name": "lo",
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": ["localhost"]}
            ],
        },
    )
    _write_json(
        config / "inputdataconfig.json",
        {
            name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
            for name in channels
        },
    )
    data = base / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, folder in channels.items():
        (data / name).symlink_to(Path(folder).resolve(), target_is_directory=True)
    for name in ("model", "output/data", "code"):
        (base / name).mkdir(parents=True, exist_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    (base / "checkpoints").symlink_to(checkpoints.resolve(), target_is_directory=True)


def _tar(folder: Path, target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    os.replace(tmp, target)
    return target


def _toolkit_environ(base: Path, job_name: str, environ: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in environ.items() if not key.startswith(("SM_", "SAGEMAKER_", "PET_"))}
    env.update(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME=job_name, PYTHONUNBUFFERED="1")
    # the container's PATH has its Python's scripts (pip, torchrun) first; so does this interpreter's here
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    env["PET_MASTER_PORT"] = str(_free_port())  # torchrun's rendezvous port: a free one, not 29500
    if importlib.util.find_spec("sagemaker_pytorch_container") is not None:
        env["SAGEMAKER_TRAINING_MODULE"] = PYTORCH_TRAINING_MODULE
        env["SM_STUDIO_LOCAL_MODE"] = "true"  # skips its DNS wait for the hosts, as SageMaker Studio's local mode does
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def emulated_hyperparameters(hyperparameters: Mapping[str, str], instance_count: int) -> dict[str, str]:
    """A distributed job's hyperparameters for one machine: ``instance_count`` instances as as many processes.

    On SageMaker, a job with ``sagemaker_torch_distributed_enabled`` on N CPU instances runs ``torchrun --nnodes N
    --nproc_per_node 1``; here the PyTorch toolkit is asked for N processes on this one host
    (``sagemaker_mpi_num_of_processes_per_host``, which its torchrun runner reads), the same world size.

    Raises:
        MissingExtraError: The PyTorch training toolkit (``dogclf[sagemaker-local]``) is not installed; without it the
            generic toolkit would run one process and ignore the distribution.
    """
    values = dict(hyperparameters)
    if instance_count <= 1 or values.get("sagemaker_torch_distributed_enabled") != "true":
        return values
    if importlib.util.find_spec("sagemaker_pytorch_container") is None:
        from dogclf.errors import MissingExtraError

        raise MissingExtraError(
            f"Emulating {instance_count} instances needs the PyTorch training toolkit, which launches torchrun as the "
            "AWS PyTorch container does: pip install 'dogclf[sagemaker-local]' (sagemaker-pytorch-training)"
        )
    values["sagemaker_mpi_num_of_processes_per_host"] = str(instance_count)
    return values


def _run_toolkit(env: Mapping[str, str], log_level: int) -> tuple[int, list[str]]:
    from dogclf._extras import require

    require("sagemaker_training", extra="sagemaker-local", purpose="Running a SageMaker training job here")
    command = [sys.executable, "-c", "from sagemaker_training.cli.train import main; main()"]
    lines: list[str] = []
    with subprocess.Popen(
        command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        for line in process.stdout or ():
            line = line.rstrip("\n")
            lines.append(line)
            logger.log(log_level, line)
        code = process.wait()
    return code, lines


def _failure(base: Path, code: int, lines: Sequence[str]) -> LocalJobError:
    reason_file = base / "output" / "failure"
    reason = reason_file.read_text(encoding="utf-8", errors="replace").strip() if reason_file.is_file() else ""
    last = "\n".join(f"  {line}" for line in lines[-20:])
    summary = reason.splitlines()[-1] if reason else "none written"
    return LocalJobError(
        f"The local training job failed (exit code {code}).\nFailure reason: {summary}\nLast log lines:\n{last}"
    )


@deprecated_log
def run_local(
    out_dir: str | os.PathLike[str],
    *,
    hyperparameters: Mapping[str, str],
    channels: Mapping[str, str | os.PathLike[str]],
    job_name: str,
    metric_definitions: Sequence[Mapping[str, str]] = (),
    instance_type: str = "local",
    environ: Mapping[str, str] | None = None,
    log_level: int = logging.INFO,
) -> LocalResult:
    """Runs a training job through the SageMaker training toolkit on a temporary ``/opt/ml`` tree.

    Args:
        out_dir: Where ``model.tar.gz``, ``output.tar.gz``, ``checkpoints/``, ``log.txt`` and ``metrics.json`` go.
        hyperparameters: The job's hyperparameters exactly as in a CreateTrainingJob request (string values,
            ``sagemaker_program`` and ``sagemaker_submit_directory`` JSON-quoted; the submit directory a local
            folder or ``.tar.gz``, or an ``s3://`` URI the toolkit fetches with boto3).
        channels: Channel name -> local folder.
        job_name: The job's name (``TRAINING_JOB_NAME``).
        metric_definitions: ``{"Name": ..., "Regex": ...}`` to read the final metrics from the log.
        instance_type: Recorded in ``resourceconfig.json``.
        environ: The environment the toolkit inherits (default ``os.environ``; ``SM_*`` variables are dropped).
        log_level: The level each of the job's log lines is logged at as it is printed (logger
            ``dogclf.sagemaker.local``).

    Returns:
        What the job left.

    Raises:
        LocalJobError: The job failed; with its failure reason and last log lines.
        MissingExtraError: The toolkit is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dogclf-opt-ml-") as tmp:
        base = Path(tmp) / "opt" / "ml"
        _layout(
            base,
            hyperparameters=hyperparameters,
            channels={name: Path(folder) for name, folder in channels.items()},
            checkpoints=out / "checkpoints",
            instance_type=instance_type,
        )
        env = _toolkit_environ(base, job_name, os.environ if environ is None else environ)
        code, lines = _run_toolkit(env, log_level)
        (out / "log.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if code != 0:
            raise _failure(base, code, lines)
        model_tar = _tar(base / "model", out / "model.tar.gz")
        output_tar = _tar(base / "output" / "data", out / "output.tar.gz")
    metrics = parse_metrics(lines, metric_definitions)
    _write_json(out / "metrics.json", metrics)
    return LocalResult(
        out_dir=out,
        model_tar=model_tar,
        output_tar=output_tar,
        metrics=metrics,
        seconds=time.perf_counter() - started,
        log=lines,
    )


@deprecated_log
def run_request(
    request: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    channels: Mapping[str, str | os.PathLike[str]],
    submit_directory: str | None = None,
    environ: Mapping[str, str] | None = None,
    log_level: int = logging.INFO,
) -> LocalResult:
    """Runs a CreateTrainingJob request (sent, or described back by SageMaker) here, as its container would.

    Its hyperparameters, metric definitions, instance type and name are the request's; ``channels`` gives each of
    its channels as a local folder (SageMaker copies S3 to ``/opt/ml/input/data/<channel>``: the caller provides
    that copy), and ``submit_directory`` may replace its ``sagemaker_submit_directory`` (a local ``.tar.gz``).
    The job's log lines are logged at ``log_level``.

    Raises:
        LocalJobError: The job failed, or a channel of the request has no local folder.
    """
    wanted = [c["ChannelName"] for c in request.get("InputDataConfig", [])]
    missing = [name for name in wanted if name not in channels]
    if missing:
        raise LocalJobError(f"No local folder for channel(s) {', '.join(missing)} of job {request['TrainingJobName']}")
    count = int(request.get("ResourceConfig", {}).get("InstanceCount", 1))
    hyperparameters = emulated_hyperparameters(request.get("HyperParameters", {}), count)
    if count > 1 and "sagemaker_mpi_num_of_processes_per_host" in hyperparameters:
        logger.info(f"Emulating {count} instances as {count} processes on this machine (torchrun, gloo)")
    if submit_directory is not None:
        hyperparameters["sagemaker_submit_directory"] = json.dumps(str(submit_directory))
    return run_local(
        out_dir,
        hyperparameters=hyperparameters,
        channels={name: channels[name] for name in wanted},
        job_name=request["TrainingJobName"],
        metric_definitions=request.get("AlgorithmSpecification", {}).get("MetricDefinitions", []),
        instance_type=request.get("ResourceConfig", {}).get("InstanceType", "local"),
        environ=environ,
        log_level=log_level,
    )


LOCAL_ROLE = "arn:aws:iam::000000000000:role/dogclf-local"


@deprecated_log
def run_spec_locally(
    spec: TrainingJobSpec,
    *,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    features: str | os.PathLike[str] | None = None,
    job_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> LocalResult:
    """``dogclf sagemaker train --local``: the request a launch would send, run here on local folders.

    The request is built exactly as for AWS (its S3 locations name a placeholder bucket; ``OUT/request.json`` keeps
    it); the source directory is built locally and the data folder (and ``features`` folder) are its channels.
    """
    from dogclf.sagemaker import training_job as jobs
    from dogclf.sagemaker.source import build_source_dir

    environ = os.environ if environ is None else environ
    data_dir = Path(data)
    jobs.check_local_data(data_dir, spec.hyperparameters)
    name = job_name or jobs.job_name(spec.base_name, spec.backbone)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = build_source_dir(out / "source", backbone=spec.backbone, names_file=spec.names_file)
    channels: dict[str, Path] = {"training": data_dir}
    if features is not None:
        channels["features"] = Path(features).expanduser()
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    request = jobs.plan_request(
        spec,
        str(data_dir),
        region=region,
        role=LOCAL_ROLE,
        bucket="dogclf-local",
        prefix=spec.base_name,
        name=name,
        features="s3://dogclf-local/features/" if features is not None else None,
    )
    (out / "request.json").write_text(jobs.format_request(request) + "\n", encoding="utf-8")
    logger.info(f"Running training job {name} here through the SageMaker training toolkit ({out / 'request.json'})")
    return run_request(request, out, channels=channels, submit_directory=str(source.archive), environ=environ)
