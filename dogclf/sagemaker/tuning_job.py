"""SageMaker hyperparameter tuning over the same declarative search space ``dogclf tune`` uses.

:func:`parameter_ranges` turns a :class:`~dogclf.tuning.space.SearchSpace` into SageMaker's ``ParameterRanges``
(through the SDK's ``sagemaker.core.parameter`` classes): a log-scale ``FloatRange`` becomes a ``Logarithmic``
continuous range, an ``IntRange`` an integer range, a ``Categorical`` a categorical one, each named as the entry
script reads it (``lr``, ``batch-size``, ``epochs``, ...). :func:`build_tuning_request` wraps a training request
(:func:`dogclf.sagemaker.training_job.build_request`) into the CreateHyperParameterTuningJob request: by default
``valid_top1`` maximised, read from the log by the same metric definitions, Bayesian search, early stopping
``Auto``; any metric of the log either way, Random, Hyperband and Grid with what each requires
(:func:`strategy_fields`), a seed and a warm start. When the job ends, :func:`write_tuning_results` writes
``best_params.json``, ``trials.csv`` and ``history.png``, the files ``dogclf tune`` writes locally.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.training_job import TrainingJob, TrainingJobSpec
    from dogclf.tuning.report import TrialRecord
    from dogclf.tuning.space import SearchSpace

__all__ = [
    "STRATEGIES",
    "best_record",
    "TuningError",
    "TuningJob",
    "describe_trials",
    "hyperparameter_value",
    "job_hyperparameters",
    "launch_tuning_job",
    "build_tuning_request",
    "parameter_ranges",
    "space_from_ranges",
    "strategy_fields",
    "trial_diagnostics",
    "tuned_values",
    "tuning_job_name",
    "tuning_objective",
    "warm_start_config",
    "write_tuning_results",
]

logger = logging.getLogger(__name__)

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
    objective_type: str | None = None,
    early_stopping: bool = True,
    seed: int | None = None,
    warm_start: Sequence[str] = (),
    warm_start_type: str = "IdenticalDataAndAlgorithm",
) -> dict[str, Any]:
    """The CreateHyperParameterTuningJob request whose trials run ``training_request`` with sampled values.

    The searched hyperparameters are taken out of the static ones; everything else (image, metric definitions,
    channels, instance, spot, checkpoints, VPC, network isolation, KMS keys, tags) is the training request's.
    What the strategy requires is added (:func:`strategy_fields`).

    Args:
        training_request: The trials' CreateTrainingJob request.
        space: The search space.
        name: The tuning job's name.
        max_jobs: Trials in all (Grid: the number of combinations, whatever is given).
        max_parallel_jobs: Trials at a time.
        strategy: ``Bayesian``, ``Random``, ``Hyperband`` or ``Grid``.
        objective: The metric (one of the metric definitions' names) to optimise.
        objective_type: ``Maximize`` or ``Minimize`` (default: Minimize for a ``*loss`` metric, else Maximize).
        early_stopping: SageMaker's early stopping ``Auto`` (Hyperband: always ``Off``, it stops trials itself).
        seed: ``RandomSeed``: the same seed proposes the same values again.
        warm_start: Parent tuning jobs (at most 5) whose trials this one starts from.
        warm_start_type: ``IdenticalDataAndAlgorithm`` or ``TransferLearning``.

    Raises:
        TuningError: Bad limits, strategy, objective or warm start.
    """
    if strategy not in STRATEGIES:
        raise TuningError(f"Unknown tuning strategy {strategy!r}; SageMaker offers {', '.join(STRATEGIES)}")
    if max_jobs < 1 or max_parallel_jobs < 1:
        raise TuningError(f"--max-jobs and --max-parallel-jobs must be >= 1, got {max_jobs} and {max_parallel_jobs}")
    ranges = parameter_ranges(space)
    static = dict(training_request["HyperParameters"])
    if strategy == "Hyperband":  # Hyperband allots the epochs itself: up to the searched range's top
        ranges, top = _without_epochs(ranges)
        static.update({} if top is None else {"epochs": str(top)})
    tuned = {entry["Name"] for entries in ranges.values() for entry in entries}
    definition = {
        "StaticHyperParameters": {k: v for k, v in static.items() if k not in tuned},
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
                "VpcConfig",
                "EnableNetworkIsolation",
                "EnableInterContainerTrafficEncryption",
            )
            if key in training_request
        },
    }
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": tuning_objective(training_request, objective, objective_type),
        "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": max_parallel_jobs},
        "ParameterRanges": ranges,
        "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
    }
    required = strategy_fields(strategy, ranges, definition["StaticHyperParameters"])
    config["ResourceLimits"].update(required.pop("ResourceLimits", {}))
    config.update(required)
    if seed is not None:
        config["RandomSeed"] = seed
    request = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "Tags": training_request.get("Tags", []),
    }
    if warm_start:
        request["WarmStartConfig"] = warm_start_config(warm_start, warm_start_type)
    return request


WARM_START_TYPES = ("IdenticalDataAndAlgorithm", "TransferLearning")


def warm_start_config(parents: Sequence[str], kind: str = "IdenticalDataAndAlgorithm") -> dict[str, Any]:
    """``WarmStartConfig``: start from the trials of up to 5 earlier tuning jobs.

    ``IdenticalDataAndAlgorithm`` needs the same data and image as the parents (a local data folder with the same
    photos gets the same content-named prefix); ``TransferLearning`` allows other data, ranges and static values.

    Raises:
        TuningError: No parent, more than 5, or an unknown type.
    """
    if kind not in WARM_START_TYPES:
        raise TuningError(f"--warm-start-type must be one of {', '.join(WARM_START_TYPES)}, got {kind!r}")
    if not 1 <= len(parents) <= 5:
        raise TuningError(f"--warm-start takes 1 to 5 parent tuning jobs, got {len(parents)}")
    return {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": parent} for parent in parents],
        "WarmStartType": kind,
    }


def tuning_objective(training_request: Mapping[str, Any], metric: str, kind: str | None = None) -> dict[str, str]:
    """``HyperParameterTuningJobObjective``: ``metric``, maximised or minimised (by default as its name says).

    Raises:
        TuningError: A metric the trials' metric definitions do not read, or a type other than Maximize/Minimize.
    """
    names = [d["Name"] for d in training_request["AlgorithmSpecification"].get("MetricDefinitions", [])]
    if metric not in names:
        raise TuningError(
            f"--objective-metric {metric!r} is not a metric the trials print; choose one of {', '.join(names)}"
        )
    chosen = kind or ("Minimize" if metric.endswith("loss") else "Maximize")
    if chosen not in ("Maximize", "Minimize"):
        raise TuningError(f"--objective-type must be Maximize or Minimize, got {kind!r}")
    return {"Type": chosen, "MetricName": metric}


def trial_diagnostics(hyperparameters: Mapping[str, str], *, tensorboard: bool, debugger: bool) -> dict[str, str]:
    """What ``--tensorboard`` and ``--debugger`` add to a tuning job's static hyperparameters.

    SageMaker's tuning API has no TensorBoard or Debugger fields for trials (``HyperParameterTrainingJobDefinition``
    has neither), so the trials do it themselves: ``--tensorboard`` makes each trial log TensorBoard scalars into its
    checkpoint folder (``tensorboard``, a relative folder the entry point puts under ``/opt/ml/checkpoints/<trial>/``,
    which SageMaker copies to S3 while it runs); ``--debugger`` runs all of dogclf's rules (the Debugger built-in
    rules' names and meanings) and its profiler in each trial: their findings go to the trial's log and output.
    """
    added: dict[str, str] = {}
    if tensorboard:
        added["tensorboard"] = TRIAL_TENSORBOARD_DIR
    if debugger:
        added["profile"] = "true"
        if "rules" not in hyperparameters:
            added["rules"] = "all"
    return added


TRIAL_TENSORBOARD_DIR = "tensorboard"
"""A trial's TensorBoard folder, relative to its checkpoint folder (synced to S3 while the trial runs)."""


def _grid_size(ranges: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    size = 1
    for entry in ranges.get("CategoricalParameterRanges", []):
        size *= len(entry["Values"])
    return size


def _without_epochs(ranges: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict[str, list[Any]], int | None]:
    """``ranges`` without an ``epochs`` range, and that range's largest value (``None`` when it had none)."""
    kept: dict[str, list[Any]] = {}
    top = None
    for kind, entries in ranges.items():
        for entry in entries:
            if entry["Name"] != "epochs":
                kept.setdefault(kind, []).append(entry)
            elif kind == "CategoricalParameterRanges":
                top = max(int(float(v)) for v in entry["Values"])
            else:
                top = int(float(entry["MaxValue"]))
    return kept, top


def strategy_fields(
    strategy: str, ranges: Mapping[str, Sequence[Mapping[str, Any]]], static: Mapping[str, str]
) -> dict[str, Any]:
    """What a strategy requires of ``HyperParameterTuningJobConfig`` beyond the common fields (AWS's rules).

    - Hyperband stops trials itself: ``TrainingJobEarlyStoppingType`` must be ``Off``, and
      ``HyperbandStrategyConfig`` says how many epochs a trial gets at least (1) and at most (the ``epochs``
      hyperparameter, which it therefore must not search: see :func:`build_tuning_request`).
    - Grid runs every combination of categorical values, so it takes categorical ranges only, and
      ``MaxNumberOfTrainingJobs`` must equal the number of combinations.

    Raises:
        TuningError: A search space the strategy cannot run, saying what would work.
    """
    from dogclf.pipeline.options import train_parser

    if strategy == "Hyperband":
        epochs = int(static.get("epochs") or train_parser().get_default("epochs"))
        return {
            "TrainingJobEarlyStoppingType": "Off",
            "StrategyConfig": {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": epochs}},
        }
    if strategy == "Grid":
        numeric = sorted(
            entry["Name"]
            for kind, entries in ranges.items()
            if kind != "CategoricalParameterRanges"
            for entry in entries
        )
        if numeric:
            raise TuningError(
                f"Grid search takes categorical values only, and {', '.join(numeric)} "
                f"{'is a range' if len(numeric) == 1 else 'are ranges'}: list the values to try instead (a JSON "
                'space, e.g. {"lr": {"type": "categorical", "choices": [0.001, 0.003, 0.01]}}; see docs/tuning.md), '
                "or use --strategy Random or Bayesian."
            )
        size = 1
        for entry in ranges.get("CategoricalParameterRanges", []):
            size *= len(entry["Values"])
        return {"ResourceLimits": {"MaxNumberOfTrainingJobs": size}}
    return {}


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


@deprecated_log
def write_tuning_results(
    out_dir: str | Path,
    records: Sequence[TrialRecord],
    *,
    space: SearchSpace,
    metric: str,
    job_name: str,
    backbone: str,
    maximize: bool = True,
) -> tuple[Path, Path, Path]:
    """Writes ``best_params.json``, ``trials.csv`` and ``history.png`` (as ``dogclf tune`` does) for a tuning job.

    The best trial is the one with the highest ``metric`` (the lowest when not ``maximize``).

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
    best = best_record(complete, maximize=maximize)
    history = plot_history(
        out / HISTORY_PNG_NAME,
        records,
        metric=metric,
        maximize=maximize,
        title=f"{job_name}: {metric} per trial (best {best.value:.4f}, trial {best.number})",
    )
    payload = {
        "params": dict(best.params),
        "hyperparameters": with_defaults(best.params),
        "value": best.value,
        "metric": metric,
        "direction": "maximize" if maximize else "minimize",
        "objective": f"{metric}, its last value in the trial's log (SageMaker's final metric)",
        "trial": best.number,
        "tuning_job": job_name,
        "backbone": backbone,
        "trials": {state: sum(r.state == state for r in records) for state in sorted({r.state for r in records})},
        "space": space.to_dict(),
    }
    best_params = write_best_params(out / BEST_PARAMS_NAME, payload)
    logger.info(f"Best: trial {best.number} {metric}={best.value:.4f} | {json.dumps(best.params)}")
    logger.info(f"Wrote {best_params}, {trials_csv}, {history}")
    return best_params, trials_csv, history


def best_record(records: Sequence[TrialRecord], *, maximize: bool = True) -> TrialRecord:
    """The trial with the best value (highest, or lowest when not ``maximize``); ``records`` all have values."""
    pick = max if maximize else min
    return pick(records, key=lambda r: r.value if r.value is not None else 0.0)


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
    def objective(self) -> dict[str, str]:
        """``{"Type": "Maximize"|"Minimize", "MetricName": ...}`` of the request."""
        return dict(self.request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"])

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

    @deprecated_log
    def wait(self, *, poll: float = 60.0, timeout: float | None = None) -> dict[str, Any]:
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
                logger.info(f"[{self.name}] {status}: {line or 'no trials yet'}")
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


@deprecated_log
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
    objective: str = "valid_top1",
    objective_type: str | None = None,
    seed: int | None = None,
    warm_start: Sequence[str] = (),
    warm_start_type: str = "IdenticalDataAndAlgorithm",
    tensorboard: bool = False,
    debugger: bool = False,
    dry_run: bool = False,
) -> TuningJob:
    """Uploads the data and the code, then creates the tuning job (with ``dry_run``, only builds the request).

    The trials keep what a training job of ``spec`` has (VPC, isolation, tags, KMS keys: ``spec.settings``);
    ``tensorboard`` and ``debugger`` are done by the trials themselves (:func:`trial_diagnostics`); the objective,
    seed, warm start and strategy are :func:`build_tuning_request`'s.

    Raises:
        DatasetError: A local data folder that is missing or has no validation split (and no valid-fraction).
        TuningError: A space or setting SageMaker cannot run.
        RequestError: A request SageMaker's API model refuses (a name too long ...), before anything is uploaded.
        AwsError: An upload or the API call failed.
    """
    import dataclasses

    from dogclf.sagemaker import training_job as jobs
    from dogclf.sagemaker.aws import as_aws, aws_errors

    aws = as_aws(aws)  # an Aws, a boto3.Session, or None (the environment)
    added = trial_diagnostics(spec.hyperparameters, tensorboard=tensorboard, debugger=debugger)
    spec = dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, **added})
    tuning = name or tuning_job_name(spec.base_name)
    template, manifest, _ = jobs.plan_launch(
        spec,
        data,
        aws=aws,
        role=role,
        bucket=bucket,
        prefix=prefix,
        name=tuning,
        features=features,
        dry_run=dry_run,
        tuning_job=tuning,
    )
    request = build_tuning_request(
        template,
        space,
        name=tuning,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        strategy=strategy,
        objective=objective,
        objective_type=objective_type,
        early_stopping=early_stopping,
        seed=seed,
        warm_start=warm_start,
        warm_start_type=warm_start_type,
    )
    jobs.validate_request("CreateHyperParameterTuningJob", request)
    job = TuningJob(tuning, aws, space, request, template)
    if dry_run:
        return job
    jobs.upload_inputs(spec, data, aws, template, manifest=manifest, features=features)
    with aws_errors(f"Creating tuning job {tuning}"):
        aws.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    logger.info(
        f"Launched tuning job {tuning}: {limits['MaxNumberOfTrainingJobs']} trials, {max_parallel_jobs} at a time, "
        f"{strategy} search, {job.objective['Type'].lower()} {job.objective['MetricName']}"
    )
    logger.info(f"  trials and best job: {job.console_url}")
    if tensorboard:
        checkpoints = template["CheckpointConfig"]["S3Uri"]
        logger.info(
            f"  TensorBoard logs: {checkpoints}/<trial>/{TRIAL_TENSORBOARD_DIR}/ (tensorboard --logdir {checkpoints})"
        )
    if debugger:
        logger.info(
            "  each trial runs dogclf's rules (all) and profiler: see its log and output.tar.gz (rules.json, profile/)"
        )
    return job
