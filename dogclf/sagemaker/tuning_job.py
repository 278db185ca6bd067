"""SageMaker hyperparameter tuning over the same declarative search space ``dogclf tune`` uses.

:func:`parameter_ranges` turns a :class:`~dogclf.tuning.space.SearchSpace` into SageMaker's ``ParameterRanges``
(through the SDK's ``sagemaker.core.parameter`` classes): a log-scale ``FloatRange`` becomes a ``Logarithmic``
continuous range, an ``IntRange`` an integer range, a ``Categorical`` a categorical one, each named as the entry
script reads it (``lr``, ``batch-size``, ``epochs``, ...). :func:`build_tuning_request` wraps a training request
(:func:`dogclf.sagemaker.training_job.build_request`) into the CreateHyperParameterTuningJob request: objective
``valid_top1`` maximised, read from the log by the same metric definitions, Bayesian search, early stopping
``Auto``. When the job ends, :func:`write_tuning_results` writes ``best_params.json``, ``trials.csv`` and
``history.png``, the files ``dogclf tune`` writes locally.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.training_job import TrainingJob, TrainingJobSpec
    from dogclf.tuning.report import TrialRecord
    from dogclf.tuning.space import SearchSpace

__all__ = [
    "STRATEGIES",
    "TuningError",
    "TuningJob",
    "describe_trials",
    "hyperparameter_value",
    "job_hyperparameters",
    "launch_tuning_job",
    "build_tuning_request",
    "parameter_ranges",
    "space_from_ranges",
    "tuned_values",
    "tuning_job_name",
    "write_tuning_results",
]

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
_TIME_SERIES = "EnableSageMakerMetricsTimeSeries"


class TuningError(DogclfError, ValueError):
    """A search space or tuning setting SageMaker cannot run."""


def _hp_name(name: str) -> str:
    from dogclf.sagemaker.hyperparameters import to_hyperparameters

    return next(iter(to_hyperparameters({name: 0})))


def parameter_ranges(space: SearchSpace) -> dict[str, list[dict[str, Any]]]:
    """SageMaker ``ParameterRanges`` for ``space`` (continuous, integer and categorical ranges).

    Raises:
        TuningError: An ``IntRange`` with a step other than 1 (SageMaker has no integer step).
    """
    from dogclf._extras import require
    from dogclf.tuning.space import Categorical, FloatRange, IntRange

    parameter = require("sagemaker.core.parameter", extra="sagemaker", purpose="SageMaker tuning ranges")
    ranges: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for name, param in space.params.items():
        key = _hp_name(name)
        if isinstance(param, FloatRange):
            scaling = "Logarithmic" if param.log else "Linear"
            entry = parameter.ContinuousParameter(param.low, param.high, scaling_type=scaling).as_tuning_range(key)
            ranges["ContinuousParameterRanges"].append(entry)
        elif isinstance(param, IntRange):
            if param.step != 1:
                raise TuningError(
                    f"{name}: SageMaker integer ranges have no step (this one steps by {param.step}); use a "
                    f"categorical of the values instead, e.g. {list(range(param.low, param.high + 1, param.step))}"
                )
            entry = parameter.IntegerParameter(param.low, param.high, scaling_type="Linear").as_tuning_range(key)
            ranges["IntegerParameterRanges"].append(entry)
        elif isinstance(param, Categorical):
            values = ["true" if c is True else "false" if c is False else str(c) for c in param.choices]
            ranges["CategoricalParameterRanges"].append(parameter.CategoricalParameter(values).as_tuning_range(key))
    return {kind: entries for kind, entries in ranges.items() if entries}


def tuning_job_name(base: str = "dogclf", *, now: datetime | None = None) -> str:
    """A unique tuning job name of at most 32 characters (SageMaker's limit): ``dogclf-YYmmdd-HHMMSS-abcd``."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%y%m%d-%H%M%S")
    return f"{base[: 32 - len(stamp) - 6]}-{stamp}-{secrets.token_hex(2)}"


def build_tuning_request(
    training_request: Mapping[str, Any],
    space: SearchSpace,
    *,
    name: str,
    max_jobs: int,
    max_parallel_jobs: int,
    strategy: str = "Bayesian",
    objective: str = "valid_top1",
    early_stopping: bool = True,
    seed: int | None = None,
) -> dict[str, Any]:
    """The CreateHyperParameterTuningJob request whose trials run ``training_request`` with sampled values.

    The searched hyperparameters are taken out of the static ones; everything else (image, metric definitions,
    channels, instance, spot, checkpoints) is the training request's.

    Raises:
        TuningError: Bad limits or strategy.
    """
    if strategy not in STRATEGIES:
        raise TuningError(f"Unknown tuning strategy {strategy!r}; SageMaker offers {', '.join(STRATEGIES)}")
    if max_jobs < 1 or max_parallel_jobs < 1:
        raise TuningError(f"--max-jobs and --max-parallel-jobs must be >= 1, got {max_jobs} and {max_parallel_jobs}")
    ranges = parameter_ranges(space)
    tuned = {entry["Name"] for entries in ranges.values() for entry in entries}
    definition = {
        "StaticHyperParameters": {k: v for k, v in training_request["HyperParameters"].items() if k not in tuned},
        "AlgorithmSpecification": {  # the time-series flag belongs to training jobs only
            k: v for k, v in training_request["AlgorithmSpecification"].items() if k != _TIME_SERIES
        },
        **{
            key: training_request[key]
            for key in (
                "RoleArn",
                "InputDataConfig",
                "OutputDataConfig",
                "ResourceConfig",
                "StoppingCondition",
                "EnableManagedSpotTraining",
                "CheckpointConfig",
                "Environment",
            )
            if key in training_request
        },
    }
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": objective},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": max_parallel_jobs},
        "ParameterRanges": ranges,
        "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
    }
    if seed is not None:
        config["RandomSeed"] = seed
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "Tags": training_request.get("Tags", []),
    }


def tuned_values(space: SearchSpace, hyperparameters: Mapping[str, str]) -> dict[str, Any]:
    """A trial's searched hyperparameters back as the space's values (``"16"`` or ``'"16"'`` -> 16 for batch_size)."""
    from dogclf.sagemaker.hyperparameters import unquote
    from dogclf.tuning.space import Categorical, FloatRange

    values: dict[str, Any] = {}
    for name, param in space.params.items():
        raw = hyperparameters.get(_hp_name(name))
        if raw is None:
            continue
        text = unquote(str(raw))
        if isinstance(param, FloatRange):
            values[name] = float(text)
        elif isinstance(param, Categorical):
            values[name] = next((c for c in param.choices if str(c).lower() == text.lower()), text)
        else:
            values[name] = int(float(text))
    return values


def write_tuning_results(
    out_dir: str | Path,
    records: Sequence[TrialRecord],
    *,
    space: SearchSpace,
    metric: str,
    job_name: str,
    backbone: str,
    log: Callable[[str], None] = print,
) -> tuple[Path, Path, Path]:
    """Writes ``best_params.json``, ``trials.csv`` and ``history.png`` (as ``dogclf tune`` does) for a tuning job.

    Raises:
        TuningError: No trial completed.
    """
    from dogclf.tuning.objective import hyperparameters as with_defaults
    from dogclf.tuning.report import (
        BEST_PARAMS_NAME,
        HISTORY_PNG_NAME,
        TRIALS_CSV_NAME,
        plot_history,
        write_best_params,
        write_trials_csv,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials_csv = write_trials_csv(out / TRIALS_CSV_NAME, records, list(space.params))
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    if not complete:
        errors = sorted({r.error for r in records if r.error})
        raise TuningError(
            f"No trial of tuning job {job_name} completed ({len(records)} trial(s), see {trials_csv})."
            + (f" Errors: {'; '.join(errors[:3])}" if errors else "")
        )
    best = max(complete, key=lambda r: r.value or 0.0)
    history = plot_history(
        out / HISTORY_PNG_NAME,
        records,
        metric=metric,
        maximize=True,
        title=f"{job_name}: {metric} per trial (best {best.value:.4f}, trial {best.number})",
    )
    payload = {
        "params": dict(best.params),
        "hyperparameters": with_defaults(best.params),
        "value": best.value,
        "metric": metric,
        "direction": "maximize",
        "objective": f"{metric}, its last value in the trial's log (SageMaker's final metric)",
        "trial": best.number,
        "tuning_job": job_name,
        "backbone": backbone,
        "trials": {state: sum(r.state == state for r in records) for state in sorted({r.state for r in records})},
        "space": space.to_dict(),
    }
    best_params = write_best_params(out / BEST_PARAMS_NAME, payload)
    log(f"Best: trial {best.number} {metric}={best.value:.4f} | {json.dumps(best.params)}")
    log(f"Wrote {best_params}, {trials_csv}, {history}")
    return best_params, trials_csv, history


def describe_trials(aws: Aws, name: str, space: SearchSpace) -> list[TrialRecord]:
    """The tuning job's training jobs as trial records (ListTrainingJobsForHyperParameterTuningJob)."""
    from dogclf.sagemaker.aws import aws_errors
    from dogclf.tuning.report import TrialRecord

    client = aws.client("sagemaker")
    with aws_errors(f"Listing the trials of tuning job {name}"):
        pages = client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
            HyperParameterTuningJobName=name
        )
        summaries = [s for page in pages for s in page.get("TrainingJobSummaries", [])]
    records = []
    for number, summary in enumerate(sorted(summaries, key=lambda s: s.get("CreationTime") or 0)):
        final = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        start, end = summary.get("TrainingStartTime"), summary.get("TrainingEndTime")
        status = summary.get("TrainingJobStatus", "")
        records.append(
            TrialRecord(
                number=number,
                state={"Completed": "COMPLETE", "Failed": "FAIL", "Stopped": "PRUNED"}.get(status, "RUNNING"),
                value=final.get("Value") if status == "Completed" else None,
                params=tuned_values(space, summary.get("TunedHyperParameters", {})),
                seconds=(end - start).total_seconds() if start and end else None,
                started=start.isoformat(timespec="seconds") if start else None,
                error=summary.get("FailureReason"),
            )
        )
    return records


def job_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """A trial's hyperparameters as a new training job takes them: unquoted, without script-mode keys or backbone."""
    from dogclf.sagemaker.hyperparameters import unquote

    return {
        k: unquote(str(v)) for k, v in hyperparameters.items() if not k.startswith("sagemaker_") and k != "backbone"
    }


def hyperparameter_value(value: Any, *, categorical: bool) -> str:
    """A sampled value as SageMaker hands it to a trial: categorical values JSON-quoted (``'"16"'``), others plain."""
    text = "true" if value is True else "false" if value is False else str(value)
    return json.dumps(text) if categorical else text


@dataclass
class TuningJob:
    """A tuning job: launched here (:func:`launch_tuning_job`) or attached by name (:meth:`attach`).

    Attributes:
        name: Its name.
        aws: The AWS context.
        space: The search space it explores (``None`` for an attached job until read from its ranges).
        request: The CreateHyperParameterTuningJob request (an attached job's is read back from SageMaker).
        training_request: The template of its trials (a CreateTrainingJob request; its ``HyperParameters`` are the
            static ones).
    """

    name: str
    aws: Aws
    space: SearchSpace | None = None
    request: dict[str, Any] = field(default_factory=dict)
    training_request: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def attach(cls, name: str, aws: Any = None) -> TuningJob:
        """The tuning job called ``name``, launched earlier, checked to exist; its space read from its ranges.

        Args:
            name: The tuning job's name.
            aws: An :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session``, or ``None`` (from the environment).

        Raises:
            AwsError: No such tuning job in the region (or it could not be read).
        """
        from dogclf.sagemaker.aws import as_aws

        job = cls(name, as_aws(aws))
        description = job.describe()
        definition = description.get("TrainingJobDefinition") or {}
        config = description.get("HyperParameterTuningJobConfig") or {}
        job.request = {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": definition,
        }
        job.training_request = {"HyperParameters": dict(definition.get("StaticHyperParameters") or {})}
        job.space = space_from_ranges(config.get("ParameterRanges") or {})
        return job

    @property
    def console_url(self) -> str:
        """The tuning job's page in the SageMaker console."""
        return self.aws.console_url(f"/hyper-tuning-jobs/{self.name}")

    @property
    def status(self) -> str:
        """``HyperParameterTuningJobStatus`` now: InProgress, Completed, Failed, Stopping or Stopped."""
        return str(self.describe()["HyperParameterTuningJobStatus"])

    def describe(self) -> dict[str, Any]:
        """DescribeHyperParameterTuningJob's answer."""
        from dogclf.sagemaker.aws import aws_errors

        with aws_errors(f"Reading tuning job {self.name}"):
            client = self.aws.client("sagemaker")
            return dict(client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.name))

    def wait(
        self, *, poll: float = 60.0, timeout: float | None = None, log: Callable[[str], None] = print
    ) -> dict[str, Any]:
        """Polls until the tuning job ends, printing its trial counts when they change; returns the description.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the job keeps running).
        """
        shown = None
        started = time.monotonic()
        while True:
            description = self.describe()
            counts = description.get("TrainingJobStatusCounters", {})
            line = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
            status = description["HyperParameterTuningJobStatus"]
            if line != shown:
                log(f"[{self.name}] {status}: {line or 'no trials yet'}")
                shown = line
            if status in TERMINAL:
                return description
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"Tuning job {self.name} is still {status} after {timeout:.0f} s")
            time.sleep(poll)

    def best_training_job(self) -> TrainingJob:
        """The best trial so far, as a :class:`~dogclf.sagemaker.training_job.TrainingJob` (its logs, its model).

        Raises:
            TuningError: No trial has completed yet.
        """
        from dogclf.sagemaker.training_job import TrainingJob

        best = self.describe().get("BestTrainingJob") or {}
        if not best.get("TrainingJobName"):
            raise TuningError(f"Tuning job {self.name} has no best training job yet (no trial has completed)")
        return TrainingJob.attach(best["TrainingJobName"], self.aws)

    def best_hyperparameters(self) -> dict[str, str]:
        """The best trial's ``dogclf train`` hyperparameters: the static ones with its tuned values."""
        best = self.describe().get("BestTrainingJob") or {}
        if not best:
            raise TuningError(f"Tuning job {self.name} has no best training job (no trial completed)")
        return job_hyperparameters({**self.training_request["HyperParameters"], **best.get("TunedHyperParameters", {})})

    def stop(self) -> bool:
        """Asks SageMaker to stop the tuning job and its running trials; ``False`` when it had already ended."""
        from dogclf.sagemaker.aws import aws_errors

        if self.status in (*TERMINAL, "Stopping"):
            return False
        with aws_errors(f"Stopping tuning job {self.name}"):
            self.aws.client("sagemaker").stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.name)
        return True


def space_from_ranges(ranges: Mapping[str, Sequence[Mapping[str, Any]]]) -> SearchSpace | None:
    """The :class:`~dogclf.tuning.space.SearchSpace` a tuning job's ``ParameterRanges`` were made from.

    The inverse of :func:`parameter_ranges`: hyperparameter names back to the space's (``batch-size`` ->
    ``batch_size``), numbers and booleans of categorical ranges back to numbers and booleans. ``None`` for no ranges.
    """
    from dogclf.tuning.space import Categorical, FloatRange, IntRange, SearchSpace, SearchSpaceError

    def value(text: str) -> Any:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    params: dict[str, Any] = {}
    for entry in ranges.get("ContinuousParameterRanges", []):
        log_scale = entry.get("ScalingType") in ("Logarithmic", "ReverseLogarithmic")
        params[entry["Name"]] = FloatRange(float(entry["MinValue"]), float(entry["MaxValue"]), log=log_scale)
    for entry in ranges.get("IntegerParameterRanges", []):
        params[entry["Name"]] = IntRange(int(entry["MinValue"]), int(entry["MaxValue"]))
    for entry in ranges.get("CategoricalParameterRanges", []):
        params[entry["Name"]] = Categorical(tuple(value(v) for v in entry["Values"]))
    try:
        return SearchSpace({name.replace("-", "_"): param for name, param in params.items()}) if params else None
    except SearchSpaceError:
        return None  # ranges over names dogclf does not tune (a tuning job launched by other means)


def launch_tuning_job(
    spec: TrainingJobSpec,
    space: SearchSpace,
    data: str,
    *,
    aws: Aws | Any = None,
    role: str,
    bucket: str | None = None,
    prefix: str = "dogclf",
    name: str | None = None,
    features: str | None = None,
    max_jobs: int = 20,
    max_parallel_jobs: int = 2,
    strategy: str = "Bayesian",
    early_stopping: bool = True,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> TuningJob:
    """Uploads the data and the code, then creates the tuning job (with ``dry_run``, only builds the request).

    Raises:
        DatasetError: A local data folder that is missing or has no validation split (and no valid-fraction).
        TuningError: A space or setting SageMaker cannot run.
        AwsError: An upload or the API call failed.
    """
    from dogclf.sagemaker import training_job as jobs
    from dogclf.sagemaker.aws import as_aws, aws_errors

    aws = as_aws(aws)  # an Aws, a boto3.Session, or None (the environment)
    if not data.startswith("s3://"):
        jobs.check_local_data(Path(data), spec.hyperparameters)
    tuning = name or tuning_job_name(spec.base_name)
    chosen_bucket = bucket or (f"sagemaker-{aws.region}-{aws.account()}" if dry_run else aws.default_bucket())
    template = jobs.plan_request(
        spec,
        data,
        region=aws.region,
        role=role,
        bucket=chosen_bucket,
        prefix=prefix,
        name=tuning,
        features=features,
        tuning_job=tuning,
    )
    request = build_tuning_request(
        template,
        space,
        name=tuning,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        strategy=strategy,
        early_stopping=early_stopping,
    )
    jobs.validate_request("CreateHyperParameterTuningJob", request)
    job = TuningJob(tuning, aws, space, request, template)
    if dry_run:
        return job
    jobs.upload_inputs(spec, data, aws, template, log)
    with aws_errors(f"Creating tuning job {tuning}"):
        aws.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    log(f"Launched tuning job {tuning}: {max_jobs} trials, {max_parallel_jobs} at a time, {strategy} search")
    log(f"  trials and best job: {job.console_url}")
    return job
