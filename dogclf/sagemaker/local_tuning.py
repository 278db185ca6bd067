"""``dogclf sagemaker tune --local``: a tuning job's trials run here, one after another, through the toolkit.

The tuning request is built exactly as for AWS (``OUT/tuning-request.json``). SageMaker's Bayesian search runs on
AWS's side, so here Optuna's TPE sampler (seeded) stands in for it: each trial samples the same search space, gets
its values as SageMaker hands them to a trial (categorical values JSON-quoted, as the seeds' best jobs show), runs
as a training job through the real training toolkit (:func:`dogclf.sagemaker.local.run_request`), and is scored by
the objective's metric definition on its log, as SageMaker scores it. Early stopping is not emulated. Each trial's
artifacts stay in ``OUT/trials/<trial>/``; ``best_params.json``, ``trials.csv`` and ``history.png`` are written as
``dogclf tune`` writes them.

With a ``features`` channel (a feature cache written by an earlier run), a trial reads the backbone features
instead of extracting them: the tuning costs one extraction instead of one per trial.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log

if TYPE_CHECKING:
    from dogclf.sagemaker.training_job import TrainingJobSpec
    from dogclf.tuning.report import TrialRecord
    from dogclf.tuning.space import SearchSpace

__all__ = ["LocalTuningResult", "run_tuning_locally"]

logger = logging.getLogger(__name__)


@dataclass
class LocalTuningResult:
    """What :func:`run_tuning_locally` produced.

    Attributes:
        name: The tuning job's name.
        records: One record per trial.
        best_params_path: ``best_params.json``.
        best_hyperparameters: The best trial's hyperparameters (static and tuned), as a training job takes them.
        trial_seconds: Wall time of each trial.
    """

    name: str
    records: list[TrialRecord]
    best_params_path: Path
    best_hyperparameters: dict[str, str]
    trial_seconds: list[float] = field(default_factory=list)


def _sample(trial: Any, space: SearchSpace) -> tuple[dict[str, Any], dict[str, str]]:
    from dogclf.sagemaker.tuning_job import _hp_name, hyperparameter_value
    from dogclf.tuning.objective import suggest
    from dogclf.tuning.space import Categorical

    values = suggest(trial, space)
    delivered = {
        _hp_name(name): hyperparameter_value(value, categorical=isinstance(space.params[name], Categorical))
        for name, value in values.items()
    }
    return values, delivered


@deprecated_log
def run_tuning_locally(
    spec: TrainingJobSpec,
    space: SearchSpace,
    *,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_jobs: int,
    features: str | os.PathLike[str] | None = None,
    objective: str = "valid_top1",
    objective_type: str | None = None,
    seed: int = 0,
    environ: Mapping[str, str] | None = None,
) -> LocalTuningResult:
    """Runs ``max_jobs`` trials of the tuning job here and writes its results (see the module docstring).

    Raises:
        DatasetError: A data folder that is missing or has no validation split (and no valid-fraction).
        TuningError: No trial completed.
    """
    import optuna

    from dogclf.sagemaker import training_job as jobs
    from dogclf.sagemaker.local import LOCAL_ROLE, LocalJobError, run_request
    from dogclf.sagemaker.source import build_source_dir
    from dogclf.sagemaker.tuning_job import (
        best_record,
        build_tuning_request,
        job_hyperparameters,
        tuning_job_name,
        write_tuning_results,
    )
    from dogclf.tuning.report import TrialRecord

    environ = os.environ if environ is None else environ
    data_dir = Path(data)
    jobs.check_local_data(data_dir, spec.hyperparameters)
    out = Path(out_dir)
    name = tuning_job_name(spec.base_name)
    source = build_source_dir(out / "source", backbone=spec.backbone, names_file=spec.names_file)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    template = jobs.plan_request(
        spec,
        str(data_dir),
        region=region,
        role=LOCAL_ROLE,
        bucket="dogclf-local",
        prefix=spec.base_name,
        name=name,
        features="s3://dogclf-local/features/" if features is not None else None,
        tuning_job=name,
    )
    request = build_tuning_request(
        template,
        space,
        name=name,
        max_jobs=max_jobs,
        max_parallel_jobs=1,
        objective=objective,
        objective_type=objective_type,
        seed=seed,
    )
    maximize = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Maximize"
    (out / "tuning-request.json").write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
    channels: dict[str, Path] = {"training": data_dir}
    if features is not None:
        channels["features"] = Path(features).expanduser()
    logger.info(f"Tuning job {name} here: {max_jobs} trials through the SageMaker training toolkit")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if maximize else "minimize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    records: list[TrialRecord] = []
    seconds: list[float] = []
    delivered_by_trial: dict[int, dict[str, str]] = {}
    for number in range(max_jobs):
        trial = study.ask()
        values, delivered = _sample(trial, space)
        delivered_by_trial[number] = delivered
        trial_name = f"{name}-{number + 1:03d}-{secrets.token_hex(4)}"
        trial_request = {**template, "TrainingJobName": trial_name}
        trial_request["HyperParameters"] = {**request["TrainingJobDefinition"]["StaticHyperParameters"], **delivered}
        started = time.perf_counter()
        try:
            result = run_request(
                trial_request,
                out / "trials" / trial_name,
                channels=channels,
                submit_directory=str(source.archive),
                environ=environ,
                log_level=logging.DEBUG,  # the trial's line below says how it went
            )
            value = result.metrics.get(objective)
            error = None if value is not None else f"{objective} was never printed"
        except LocalJobError as exc:
            value, error = None, str(exc).splitlines()[0]
        seconds.append(time.perf_counter() - started)
        state = "COMPLETE" if value is not None else "FAIL"
        done = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.tell(trial, value, state=done)
        records.append(TrialRecord(number, state, value, values, seconds=seconds[-1], error=error))
        outcome = f"{objective}={value:.4f}" if value is not None else f"FAILED ({error})"
        logger.info(
            f"trial {number + 1}/{max_jobs} {trial_name}: {outcome} in {seconds[-1]:.1f} s | {json.dumps(values)}"
        )
    best_path, _, _ = write_tuning_results(
        out, records, space=space, metric=objective, job_name=name, backbone=spec.backbone, maximize=maximize
    )
    best = best_record([r for r in records if r.value is not None], maximize=maximize)
    best_hyperparameters = job_hyperparameters({**template["HyperParameters"], **delivered_by_trial[best.number]})
    return LocalTuningResult(name, records, best_path, best_hyperparameters, seconds)
