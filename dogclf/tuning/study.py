"""``tune()``: a resumable Optuna study whose trials train the head on features extracted once.

The backbone runs once over the data (the feature cache makes a rerun skip even that); every trial then builds a
fresh head, trains it on the in-memory features with the sampled hyperparameters, reports the validation metric
after each epoch to the pruner, and returns the metric of its last epoch. Optuna is imported only here, inside the
functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.errors import DogclfError
from dogclf.tuning.objective import (
    Objective,
    default_params,
    head_config,
    hyperparameters,
    prepare_trials,
    train_config,
)
from dogclf.tuning.report import (
    BEST_PARAMS_NAME,
    HISTORY_PNG_NAME,
    TRIALS_CSV_NAME,
    TrialRecord,
    plot_history,
    write_best_params,
    write_trials_csv,
)
from dogclf.tuning.space import DEFAULT_SPACE, SearchSpace

if TYPE_CHECKING:
    import optuna

    from dogclf.backbones.spec import BackboneSpec

__all__ = ["DEFAULT_STUDY_DB", "METRICS", "TuneError", "TuneResult", "default_storage", "tune"]

logger = logging.getLogger(__name__)

METRICS: Mapping[str, str] = MappingProxyType({"valid_top1": "maximize", "valid_loss": "minimize"})
"""Objective metrics (the last epoch's value) and their direction."""

DEFAULT_STUDY_DB = "study.db"
MODEL_DIR_NAME = "model"
_SETUP_ATTR = "dogclf_setup"
_DEFAULTS_ATTR = "dogclf_defaults"


class TuneError(DogclfError, ValueError):
    """A tuning run that cannot start or produced nothing usable."""


@dataclass
class TuneResult:
    """What :func:`tune` produced.

    Attributes:
        out_dir: The output folder.
        study_name: The Optuna study's name.
        storage: The storage URL (password hidden).
        metric: The objective metric; its last-epoch value is the trial's value.
        direction: ``"maximize"`` or ``"minimize"``.
        best_params: The best trial's hyperparameters (only those the space searches).
        best_value: The best trial's value.
        best_trial: The best trial's number.
        counts: Trials in the study by state (``COMPLETE``, ``PRUNED``, ``FAIL``, ...).
        ran: Trials this call ran.
        best_params_path: ``best_params.json``.
        trials_csv: ``trials.csv``.
        history_png: ``history.png``.
        model_dir: The model trained with the best values (``train_best``), else ``None``.
        seconds: Wall time of the call.
    """

    out_dir: Path
    study_name: str
    storage: str
    metric: str
    direction: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    counts: dict[str, int]
    ran: int
    best_params_path: Path
    trials_csv: Path
    history_png: Path
    model_dir: Path | None = None
    seconds: float = 0.0


def default_storage(out_dir: str | os.PathLike[str]) -> str:
    """The default study storage: a SQLite file ``study.db`` in ``out_dir``."""
    return f"sqlite:///{Path(out_dir).resolve() / DEFAULT_STUDY_DB}"


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by _open_storage; never echo it with a password
        return url.split("://", 1)[0] + "://..."


def _check_arguments(trials: int, timeout: float | None, metric: str, valid_fraction: float | None) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials must be an integer >= 1 (the study's total of finished trials), got {trials!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise TuneError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
    if metric not in METRICS:
        raise TuneError(f"Unknown tuning metric {metric!r}; choose one of {', '.join(METRICS)}")
    if valid_fraction is not None and not 0 < valid_fraction < 1:
        raise TuneError(f"--valid-fraction must be between 0 and 1, got {valid_fraction!r}")


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    import optuna

    if "://" not in url:
        raise TuneError(
            f"--storage takes a database URL, got {url!r}; e.g. sqlite:///path/to/study.db or "
            "postgresql://user:password@host/dbname (several machines can share one study through it)"
        )
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy: unknown dialect, missing driver, unreachable server, ...
        raise TuneError(
            f"Cannot open the study storage {_hide_password(url)!r}: {type(exc).__name__}: {exc}. "
            "Check the URL and that its database driver is installed and the server reachable."
        ) from exc
    if url.startswith("sqlite:"):
        _write_ahead_log(storage.engine)
    return storage


def _write_ahead_log(engine: Any) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: a commit is a write to the log, not an fsync.

    Every epoch of every trial commits its metric (the pruner reads them), and with SQLite's default rollback journal
    each commit waits for the disk (about 7 ms on a busy machine, longer than a trial's epoch). In WAL mode a
    committed trial survives a crash or kill of the process; only a power loss can drop the last few commits, and
    it never corrupts the file.
    """
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened while the storage created its tables reconnect through the listener


def _fail_abandoned(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Marks trials left RUNNING by a killed process as FAIL (only for the private default storage)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # FrozenTrial has no public id; the storage keys user attributes by it.
        storage.set_trial_user_attr(trial._trial_id, "error", "abandoned: its process stopped before it finished")
        study.tell(trial.number, state=TrialState.FAIL)
        logger.info(f"trial {trial.number} was left running by an earlier process that stopped; marked FAIL")


def _check_setup(study: optuna.Study, setup: dict[str, Any], *, storage: str) -> None:
    stored = study.user_attrs.get(_SETUP_ATTR)
    if stored is None:
        if study.trials:
            raise TuneError(
                f"Study {study.study_name!r} in {storage} already has trials but was not made by dogclf tune; "
                "choose another --study-name."
            )
        study.set_user_attr(_SETUP_ATTR, setup)
        return
    differ = sorted(k for k in set(stored) | set(setup) if stored.get(k) != setup.get(k))
    if differ:
        details = "; ".join(f"{k}: study has {stored.get(k)!r}, this run {setup.get(k)!r}" for k in differ)
        raise TuneError(
            f"Study {study.study_name!r} in {storage} was started with a different setup ({details}). Its trials "
            "are not comparable with this run's: choose another --out or --study-name, or rerun with the study's "
            "settings to continue it."
        )


def _format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _records(study: optuna.Study) -> list[TrialRecord]:
    records = []
    for t in study.get_trials(deepcopy=False):
        last = t.last_step
        seconds = t.duration.total_seconds() if t.duration is not None else None
        records.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                value=t.value if t.state.name == "COMPLETE" else None,
                params=dict(t.params),
                seconds=seconds,
                last_epoch=last,
                last_reported=t.intermediate_values.get(last) if last is not None else None,
                started=t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                error=t.user_attrs.get("error"),
            )
        )
    return records


def _counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _started(study: optuna.Study) -> int:
    """Trials that ran or are running (not the queued defaults trial before it starts)."""
    return sum(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False))


def _finished(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _progress_callback(metric: str) -> Callable[[optuna.Study, Any], None]:
    def callback(study: optuna.Study, trial: Any) -> None:
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        state = trial.state.name
        if state == "COMPLETE":
            outcome = f"{metric}={trial.value:.4f}"
        elif state == "PRUNED":
            last = trial.last_step
            outcome = f"at epoch {last} ({metric}={trial.intermediate_values.get(last, float('nan')):.4f})"
        else:
            outcome = trial.user_attrs.get("error", "")
        defaults = " (the dogclf train defaults)" if trial.user_attrs.get(_DEFAULTS_ATTR) else ""
        line = f"trial {trial.number}{defaults} {state} {outcome} | {_format_params(trial.params)} | {seconds:.1f} s"
        try:
            best = study.best_trial
            line += f" | best: trial {best.number} {metric}={best.value:.4f}"
        except ValueError:
            pass  # nothing complete yet
        logger.info(line)

    return callback


def _sampler_seed(seed: int, existing: int, *, shared: bool) -> int:
    """The sampler's seed.

    ``seed`` for a new study; offset by the trials already there when resuming (so a resumed run does not replay
    the first run's random start-up points), and by host and process on a shared storage (so machines starting
    together do not propose the same points).
    """
    value = seed + existing
    if shared:
        value += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return value % (2**32)


@deprecated_log
def tune(
    data_dir: str | os.PathLike[str],
    backbone: str | BackboneSpec,
    out_dir: str | os.PathLike[str],
    *,
    trials: int,
    space: SearchSpace = DEFAULT_SPACE,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    seed: int = 0,
    valid_fraction: float | None = None,
    names: Mapping[str, str] | str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = "imagenet",
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    metric: str = "valid_top1",
    train_best: bool = False,
    device: str = "auto",
    num_workers: int | None = None,
    precision: str = "auto",
    engine: str = "auto",
    extract_batch_size: int = 64,
    strict: bool = False,
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 2,
    progress: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> TuneResult:
    """Searches head hyperparameters with Optuna on features extracted once, and writes the results.

    Each trial samples ``space`` (TPE), trains a fresh head for the sampled number of epochs on the cached
    features, reports ``metric`` on the validation split after every epoch (a median pruner stops trials that fall
    behind the others at the same epoch), and is worth its **last** epoch's ``metric``: the value a model trained
    with those hyperparameters (``--train-best``) has.

    The study lives in ``storage`` (default: ``sqlite:///<out_dir>/study.db``), so a rerun of the same command
    continues it: ``trials`` is the study's target of finished (complete or pruned) trials, and only the missing
    ones run. Failed trials do not count (a rerun retries them) and are kept with their error.

    Args:
        data_dir: Folder with ``train/`` and ``valid/``, or one class-per-folder tree with ``valid_fraction``.
        backbone: Backbone name or spec.
        out_dir: Where ``study.db``, ``best_params.json``, ``trials.csv``, ``history.png`` (and ``model/``) go.
        trials: Finished trials the study should hold when this call returns (unless ``timeout`` stops it).
        space: The search space; hyperparameters it leaves out keep their ``dogclf train`` defaults.
        storage: An SQLAlchemy database URL; several machines running ``tune`` against one URL and study name
            share the study.
        study_name: Default ``dogclf-<backbone>``.
        timeout: Stop starting new trials after this many seconds.
        seed: Seeds the sampler, the valid split, each head's initialisation and shuffling.
        valid_fraction: Hold out this fraction of train for validation (data without ``valid/``).
        names: Folder -> display name map or names file.
        weights: Backbone weights: ``"imagenet"``, ``None``/``"none"``, or a local file.
        cache: Keep the features in the on-disk feature cache (``False``: in memory only).
        cache_dir: The feature-cache folder (default ``$XDG_CACHE_HOME/dogclf/features``).
        metric: ``"valid_top1"`` (maximised) or ``"valid_loss"`` (minimised).
        train_best: Afterwards train a model with the best values into ``out_dir/model``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: DataLoader workers for extraction (default from the CPU count).
        precision: Feature-extraction precision (``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``).
        engine: Feature-extraction runtime (``"auto"``, ``"torch"``, ``"openvino"``).
        extract_batch_size: Images per extraction batch.
        strict: Fail on unreadable images instead of skipping them.
        pruner_startup_trials: Trials that finish before pruning starts.
        pruner_warmup_epochs: Epochs of every trial that are never pruned.
        progress: Progress bar during extraction; ``None`` shows it when stderr is a terminal.
        environ: The environment (for the default cache folder); ``os.environ`` when ``None``.

    The per-trial lines and other messages go to the ``dogclf.tuning`` (and ``dogclf.training``, ``dogclf.features``)
    loggers at INFO; ``log=`` (a callback) is deprecated.

    Returns:
        The result; the files are written before it returns.

    Raises:
        TuneError: Bad arguments, an unusable storage, a study started with another setup, no validation split,
            or no trial completed.
        KeyboardInterrupt: On Ctrl-C, after the finished trials are stored and the outputs written.
    """
    from dogclf.backbones.registry import get_backbone
    from dogclf.backbones.weights import check_weights_available, weights_label
    from dogclf.data.folder import load_splits
    from dogclf.features.cache import default_cache_dir

    started = time.perf_counter()
    _check_arguments(trials, timeout, metric, valid_fraction)
    if not isinstance(space, SearchSpace):
        raise TuneError(f"space must be a SearchSpace, got {type(space).__name__}")
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared = storage is not None
    url = storage if storage is not None else default_storage(out)
    shown_url = _hide_password(url)
    name = study_name or f"dogclf-{spec.name}"
    direction = METRICS[metric]

    check_weights_available(spec, weights)  # before the data scan: an offline machine learns it at once
    logger.info(f"Reading {data_dir} and decoding every image once to find unreadable files ...")
    splits = load_splits(data_dir, valid_fraction=valid_fraction, names=names, seed=seed, strict=strict)
    if not splits.valid:
        raise TuneError(
            f"Tuning needs a validation split, and {str(splits.root)!r} has no valid/ folder: pass "
            "--valid-fraction 0.2 to hold out 20% of train."
        )
    logger.info(
        f"Data {splits.root}: {len(splits.classes)} classes, {len(splits.train)} train, {len(splits.valid)} valid "
        f"({splits.valid_source})" + (f"; {len(splits.skipped)} unreadable file(s) skipped" if splits.skipped else "")
    )
    setup = {
        "backbone": spec.name,
        "weights": weights_label(weights),
        "metric": metric,
        "seed": seed,
        "space": space.to_dict(),
        "classes": [c.folder for c in splits.classes],
        "n_train": len(splits.train),
        "n_valid": len(splits.valid),
        "valid_source": splits.valid_source,
    }

    with _quiet_optuna():
        study = _open_study(
            url,
            name,
            direction=direction,
            setup=setup,
            space=space,
            seed=seed,
            shared=shared,
            pruner_startup_trials=pruner_startup_trials,
            pruner_warmup_epochs=pruner_warmup_epochs,
        )
        done = _finished(study)
        remaining = max(0, trials - done)
        logger.info(
            f"Study {name!r} in {shown_url}: {done} finished trial(s) stored, running {remaining} more "
            f"(target {trials}); objective: last-epoch {metric} ({direction})"
        )
        ran_before = _started(study)
        if remaining:
            env = os.environ if environ is None else environ
            folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir(env)) if cache else None
            shared_data = prepare_trials(
                splits,
                spec,
                weights=weights,
                seed=seed,
                cache_dir=folder,
                precision=precision,
                engine=engine,
                extract_batch_size=extract_batch_size,
                device=device,
                num_workers=num_workers,
                progress=progress,
            )
            objective = Objective(shared_data, space=space, metric=metric, seed=seed, device=device)
            try:
                _optimize(study, objective, trials=trials, remaining=remaining, timeout=timeout)
            except KeyboardInterrupt:
                if _has_complete(study):
                    _write_outputs(study, out, space=space, metric=metric, storage=shown_url, spec_name=spec.name)
                raise
        ran = _started(study) - ran_before
        files = _write_outputs(study, out, space=space, metric=metric, storage=shown_url, spec_name=spec.name)

    best = study.best_trial
    result = TuneResult(
        out_dir=out,
        study_name=name,
        storage=shown_url,
        metric=metric,
        direction=direction,
        best_params=dict(best.params),
        best_value=float(best.value),  # type: ignore[arg-type]
        best_trial=best.number,
        counts=_counts(study),
        ran=ran,
        best_params_path=files[0],
        trials_csv=files[1],
        history_png=files[2],
    )
    logger.info(
        f"Best: trial {best.number} {metric}={best.value:.4f} | {_format_params(best.params)}\n"
        f"Wrote {files[0]}, {files[1]}, {files[2]}"
    )
    if train_best:
        result.model_dir = _train_best(
            result,
            data_dir=data_dir,
            spec=spec,
            seed=seed,
            valid_fraction=valid_fraction,
            names=names,
            weights=weights,
            cache=cache,
            cache_dir=cache_dir,
            device=device,
            num_workers=num_workers,
            precision=precision,
            engine=engine,
            extract_batch_size=extract_batch_size,
            strict=strict,
            progress=progress,
            environ=environ,
        )
    result.seconds = time.perf_counter() - started
    return result


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO log off (the per-trial lines replace it), restored afterwards."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _open_study(
    url: str,
    name: str,
    *,
    direction: str,
    setup: dict[str, Any],
    space: SearchSpace,
    seed: int,
    shared: bool,
    pruner_startup_trials: int,
    pruner_warmup_epochs: int,
) -> optuna.Study:
    """Creates the study or loads it to continue, after checking it was started with the same setup."""
    import optuna

    shown = _hide_password(url)
    storage = _open_storage(url)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        # Steps are 1-based epochs; Optuna may prune at step >= n_warmup_steps.
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs + 1
        ),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise TuneError(
            f"Study {name!r} in {shown} {study.direction.name.lower()}s its objective, but this run's metric is to "
            f"be {direction}d: choose another --study-name or --out."
        )
    _check_setup(study, setup, storage=shown)
    study.sampler = optuna.samplers.TPESampler(seed=_sampler_seed(seed, len(study.trials), shared=shared))
    if not shared:
        _fail_abandoned(study, storage)
    _enqueue_defaults(study, space)
    return study


def _enqueue_defaults(study: optuna.Study, space: SearchSpace) -> None:
    """Queues the ``dogclf train`` defaults as the study's first trial, so it can never return something worse.

    Once per study: a study that already holds the defaults trial (in any state) does not get it again.
    """
    if any(t.user_attrs.get(_DEFAULTS_ATTR) for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(default_params(space), user_attrs={_DEFAULTS_ATTR: True}, skip_if_exists=True)


def _optimize(
    study: optuna.Study,
    objective: Objective,
    *,
    trials: int,
    remaining: int,
    timeout: float | None,
) -> None:
    """Runs up to ``remaining`` trials; stops early once the study holds ``trials`` finished ones (shared studies)."""
    import optuna
    from optuna.trial import TrialState

    study.optimize(
        objective,
        n_trials=remaining,
        timeout=timeout,
        catch=(Exception,),  # a failing trial is stored as FAIL with its error, and the study goes on
        callbacks=[
            _progress_callback(objective.metric),
            optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
        ],
        gc_after_trial=False,
    )


def _has_complete(study: optuna.Study) -> bool:
    return any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def _write_outputs(
    study: optuna.Study, out: Path, *, space: SearchSpace, metric: str, storage: str, spec_name: str
) -> tuple[Path, Path, Path]:
    records = _records(study)
    maximize = METRICS[metric] == "maximize"
    trials_csv = write_trials_csv(out / TRIALS_CSV_NAME, records, list(space.params))
    if not _has_complete(study):
        reasons = sorted({r.error for r in records if r.error})
        raise TuneError(
            f"No trial of study {study.study_name!r} completed ({len(records)} trial(s): see {trials_csv})."
            + (f" Errors: {'; '.join(reasons[:3])}" if reasons else "")
        )
    best = study.best_trial
    counts = _counts(study)
    history_png = plot_history(
        out / HISTORY_PNG_NAME,
        records,
        metric=metric,
        maximize=maximize,
        title=f"{study.study_name}: last-epoch {metric} per trial (best {best.value:.4f}, trial {best.number})",
    )
    payload = {
        "params": dict(best.params),
        "hyperparameters": hyperparameters(best.params),
        "value": best.value,
        "metric": metric,
        "direction": METRICS[metric],
        "objective": f"{metric} after the last epoch",
        "trial": best.number,
        "study_name": study.study_name,
        "storage": storage,
        "backbone": spec_name,
        "trials": counts,
        "space": space.to_dict(),
    }
    best_path = write_best_params(out / BEST_PARAMS_NAME, payload)
    return best_path, trials_csv, history_png


def _train_best(result: TuneResult, *, data_dir: Any, spec: BackboneSpec, seed: int, **options: Any) -> Path:
    from dogclf.pipeline import train

    values = hyperparameters(result.best_params)
    target = result.out_dir / MODEL_DIR_NAME
    logger.info(f"Training the final model with trial {result.best_trial}'s values into {target} ...")
    trained = train(
        data_dir,
        spec,
        target,
        config=train_config(values, seed=seed, device=options.pop("device"), num_workers=options.pop("num_workers")),
        head=head_config(values),
        overwrite=True,
        **options,
    )
    final = trained.final
    payload = _read_json(result.best_params_path)
    payload["model_dir"] = str(target)
    payload["model_final"] = {k: final.get(k) for k in ("valid_top1", "valid_loss", "train_top1") if k in final}
    if trained.test is not None:
        payload["model_test"] = trained.test
    write_best_params(result.best_params_path, payload)
    return target


def _read_json(path: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
