"""``train()``: folder -> splits -> model -> trained head -> model directory."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dogclf._logging import deprecated_log, main_process_only
from dogclf.artifact import CONFIG_NAME, WEIGHTS_NAME, save_model
from dogclf.backbones.registry import get_backbone
from dogclf.backbones.spec import BackboneSpec
from dogclf.backbones.weights import check_weights_available, weights_label
from dogclf.data.folder import DataSplits, check_fraction, drop_unreadable, load_splits
from dogclf.diagnostics.phases import phase
from dogclf.errors import ModelDirError
from dogclf.hardware import resolve_device
from dogclf.model import DogClassifierNet, HeadConfig, build_model
from dogclf.training.calibration import Calibration, calibrate, collect_logits
from dogclf.training.callbacks import Callback, EpochLogLine, ProgressBars
from dogclf.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from dogclf.training.config import TrainConfig
from dogclf.training.log_line import format_test_line
from dogclf.training.loop import Trainer, check_fingerprint

if TYPE_CHECKING:
    from dogclf.diagnostics.session import Diagnostics
    from dogclf.evaluation import EvalReport
    from dogclf.features.pipeline import FeatureSet
    from dogclf.inference.novelty import NoveltyScorer
    from dogclf.training.distributed import ProcessGroup
    from dogclf.training.lbfgs import LbfgsHeadFitter

__all__ = ["TrainResult", "head_solver", "kept_metrics", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model_dir: The saved model directory.
        history: Per-epoch metrics.
        splits: The data as it was read (skipped files included).
        test: Test-split metrics (``top1``, ``top5``, ``n``), if there was a test split.
        final: The metrics of the saved weights: the kept epoch's (``--keep best``), or the L-BFGS fit's.
    """

    model_dir: Path
    history: list[dict[str, float]]
    splits: DataSplits
    test: dict[str, Any] | None = None
    final: dict[str, float] = field(default_factory=dict)


def _describe_skipped(splits: DataSplits) -> None:
    if not splits.skipped:
        return
    logger.info("Skipping %d unreadable image file(s):", len(splits.skipped))
    for path, reason in splits.skipped[:50]:
        logger.info("  skipped %s: %s", path, reason)
    if len(splits.skipped) > 50:
        logger.info("  ... and %d more", len(splits.skipped) - 50)


@phase("calibration")
def _calibrate(
    model: torch.nn.Module,
    splits: DataSplits,
    spec: BackboneSpec,
    config: TrainConfig,
    device: torch.device,
    valid_features: FeatureSet | None = None,
    precision: str = "fp32",
) -> Calibration:
    """Step 5: the temperature and unknown threshold, fitted on the valid split (identity when there is none).

    With ``valid_features`` (the feature path) the valid logits come from the head alone, not the images. The
    calibration records ``precision`` (the features' or the pass's), the precision the model is then served in.
    """
    if not splits.valid:
        calibration = Calibration()
    elif valid_features is not None:
        from dogclf.training.head import head_logits

        head = model.get_submodule("head")
        calibration = calibrate(head_logits(head, valid_features.features), valid_features.labels)
    else:
        logits, labels = collect_logits(
            model,
            splits.valid,
            spec.preprocessing,
            batch_size=config.batch_size,
            num_workers=config.workers(),
            device=device,
            precision=precision,
        )
        calibration = calibrate(logits, labels)
    logger.info(calibration.summary())
    return dataclasses.replace(calibration, precision=precision) if calibration.fitted else calibration


def _inference_precision(requested: str, device: torch.device) -> str:
    """The precision of the pass through the images (calibration and test) when no features were extracted."""
    from dogclf.inference.precision import choose_precision

    return choose_precision(requested, {}, device).precision


def _feature_mode(*, freeze: bool, augment: bool, cache: bool) -> str:
    """How training sees images: ``"cached"``/``"in-memory"`` features (extracted once) or ``"images"``."""
    if not freeze or augment:
        return "images"  # the backbone learns, or inputs differ every epoch: through the backbone every epoch
    return "cached" if cache else "in-memory"


def _restore_checkpoint_weights(model: torch.nn.Module, checkpoint: Path, fingerprint: dict[str, Any]) -> None:
    """Loads a resumed run's weights before extraction, so features come from the checkpoint's backbone."""
    payload = load_checkpoint(checkpoint)
    check_fingerprint(payload, fingerprint, checkpoint)
    model.load_state_dict(payload["model"])


def kept_metrics(history: Sequence[Mapping[str, float]], kept_epoch: int) -> dict[str, float]:
    """The metrics of the epoch whose weights were kept (``config.json``'s ``metrics.final``); the last without one."""
    for entry in history:
        if int(entry["epoch"]) == kept_epoch:
            return dict(entry)
    return dict(history[-1]) if history else {}


def _check_out_dir(out: Path, checkpoint: Path, *, resume: bool, overwrite: bool) -> None:
    if resume or overwrite:
        return
    found = [path for path in (out / WEIGHTS_NAME, out / CONFIG_NAME, checkpoint) if path.exists()]
    if found:
        names = [path.name if path.parent == out else str(path) for path in found]
        raise ModelDirError(
            f"Output folder {str(out)!r} already holds {', '.join(names)}. Pass --resume to continue an "
            "interrupted run, --overwrite to replace it, or choose another --out."
        )


def _remove_previous_run(out: Path, checkpoint: Path) -> None:
    """With ``overwrite``: the previous run's files go before training starts, so none is mistaken for this run's.

    Only the files a run writes are removed (its checkpoint, ``config.json``, ``model.safetensors``); anything else in
    the folder stays.
    """
    removed = [path for path in (checkpoint, out / CONFIG_NAME, out / WEIGHTS_NAME) if path.is_file()]
    for path in removed:
        path.unlink()
    if removed:
        names = ", ".join(path.name if path.parent == out else str(path) for path in removed)
        logger.info("--overwrite: removed the previous run's %s from %s", names, out)


@deprecated_log
def train(
    data_dir: str | os.PathLike[str],
    backbone: str | BackboneSpec,
    out_dir: str | os.PathLike[str],
    *,
    config: TrainConfig | None = None,
    weights: str | os.PathLike[str] | None = "imagenet",
    freeze: bool = True,
    head: HeadConfig | None = None,
    valid_fraction: float | None = None,
    names: Mapping[str, str] | str | os.PathLike[str] | None = None,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    precision: str = "auto",
    engine: str = "auto",
    extract_batch_size: int = 64,
    environ: Mapping[str, str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    diagnostics: Diagnostics | None = None,
    novelty: bool = True,
    degraded_views: int = 0,
    degraded_smoothing: float | None = None,
) -> TrainResult:
    """Trains a classifier on a data folder and saves it as a model directory.

    Args:
        data_dir: Folder with ``train/`` (and ``valid/``, ``test/``), or one
            class-per-subfolder tree (then pass ``valid_fraction``).
        backbone: Backbone name or spec.
        out_dir: Model directory to write; also holds the per-epoch ``checkpoint.pt``.
        config: Hyperparameters (defaults: a linear head on features fitted by L-BFGS with a cross-validated
            penalty; otherwise 5 epochs, batch 32, Adam lr 1e-3, the best epoch by validation loss kept).
        weights: ``"imagenet"``, ``None``/``"none"`` or a local weights file.
        freeze: Freeze the backbone and train the head only.
        head: Head shape (linear by default).
        valid_fraction: Hold out this fraction of train for validation.
        names: Folder -> display name map or names file.
        strict: Fail on unreadable images instead of skipping them.
        resume: Continue from ``out_dir/checkpoint.pt``.
        overwrite: Replace an existing model in ``out_dir``.
        callbacks: Extra training callbacks (e.g. debugger hooks).
        progress: Progress bars; ``None`` shows them when stderr is a terminal.
        cache: With a frozen backbone and no augmentation, features are extracted once per image and the head
            trains on them; ``cache`` keeps them in the on-disk feature cache for later runs (``False``: in memory
            only). With ``freeze=False`` or ``config.augment`` images go through the backbone every epoch.
        cache_dir: The feature-cache folder; default ``$DOGCLF_FEATURE_CACHE``, else
            ``$XDG_CACHE_HOME/dogclf/features``, else ``~/.cache/dogclf/features``.
        precision: Feature-extraction precision: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        engine: Feature-extraction runtime: ``"auto"`` (OpenVINO on an x86 CPU where installed, else torch),
            ``"torch"`` or ``"openvino"``.
        extract_batch_size: Images per batch during feature extraction.
        environ: The environment (for the default cache folder); ``os.environ`` when ``None``.
        novelty: Fit the feature-space novelty score (:mod:`dogclf.inference.novelty`) that decides "unknown" (needs a
            validation split for its threshold); ``False``: the softmax threshold alone, as before.
        checkpoint_dir: Where the per-epoch ``checkpoint.pt`` goes (and ``resume`` reads it); default ``out_dir``.
            A SageMaker job keeps it in ``/opt/ml/checkpoints``, which SageMaker syncs with S3.
        output_dir: Also write the history (JSON, CSV, plot) and the held-out split's evaluation report and
            confusion matrix here (:mod:`dogclf.pipeline.reports`); a SageMaker job uses ``SM_OUTPUT_DATA_DIR``.
        diagnostics: Training rules (on by default), profiling, TensorBoard and smdebug
            (:class:`dogclf.diagnostics.Diagnostics`).
        degraded_views: Also fit the head on this many degraded views of each training photo (cropped, cut to
            64-160 px, re-compressed at JPEG quality 15-60: :mod:`dogclf.data.degrade`), written once beside the
            feature cache and extracted like the photos, so the head and its temperature hold better on photos unlike
            the curated training ones. Needs the feature path (a frozen backbone, no ``augment``) and one process.
            The novelty score and calibration still use the photos themselves.
        degraded_smoothing: Label smoothing of the degraded views' targets (the photos' keep ``config``'s), in
            [0, 1): ``None`` is :data:`~dogclf.data.degrade.DEFAULT_VIEW_SMOOTHING` with the L-BFGS head and 0 with
            the epoch loop, which cannot smooth some rows only (a value > 0 with the loop is a ``ValueError``).

    Messages go to the ``dogclf.training``, ``dogclf.features`` and ``dogclf.diagnostics`` loggers (under torchrun,
    from rank 0 only; see docs/logging.md); ``log=`` (a callback) still works, with a DeprecationWarning.

    Returns:
        The result, with the model directory path.
    """
    environ = os.environ if environ is None else environ
    config, group = _join_processes(config or TrainConfig(), environ)
    main = group is None or group.is_main
    options = _Options(
        config=config,
        head=head or HeadConfig(),
        weights=weights,
        freeze=freeze,
        cache=cache,
        cache_dir=cache_dir,
        precision=precision,
        engine=engine,
        extract_batch_size=extract_batch_size,
        environ=environ,
        show_bars=(sys.stderr.isatty() if progress is None else progress) and main,
        group=group,
        degraded_views=degraded_views,
    )
    with main_process_only(main):  # under torchrun, rank 0 logs the progress
        out = Path(out_dir)
        checkpoint = Path(checkpoint_dir if checkpoint_dir is not None else out) / CHECKPOINT_NAME
        _check_out_dir(out, checkpoint, resume=resume, overwrite=overwrite)
        if valid_fraction is not None:
            check_fraction(valid_fraction)
        mode = options.feature_mode()
        solver = head_solver(options.config, options.head, mode=mode)  # before the data scan: a bad choice fails fast
        _check_degraded_views(degraded_views, mode=mode, distributed=group is not None)
        smoothing = _view_smoothing(degraded_smoothing, views=degraded_views, solver=solver)
        options = dataclasses.replace(options, degraded_smoothing=smoothing)
        spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
        if not (resume and checkpoint.is_file()):  # a resumed run takes its weights from the checkpoint
            check_weights_available(spec, weights, environ=options.environ)
        from dogclf.diagnostics.session import open_session

        session = open_session(diagnostics, out, environ=options.environ)
        splits = _read_data(data_dir, valid_fraction=valid_fraction, names=names, strict=strict, options=options)
        run = _build_run(spec, splits, checkpoint, resume=resume, mode=mode, solver=solver, options=options)
        if overwrite and not run.resuming and main:
            _remove_previous_run(out, checkpoint)
        trainer, features = _make_trainer(run, splits, [*callbacks, *session.callbacks(splits.class_names)], options)
        history = _fit(trainer, run, options)
        if group is not None and not group.is_main:
            session.close()
            group.barrier()  # rank 0 calibrates, evaluates and saves
            return TrainResult(model_dir=out, history=history, splits=splits)
        valid_features = features["valid"] if features is not None else None
        precision = run.precision or _inference_precision(options.precision, trainer.device)
        calibration = _calibrate(run.model, splits, spec, options.config, trainer.device, valid_features, precision)
        scorer = _fit_novelty(run, splits, features, options, calibration.temperature) if novelty else None
        held_out = "test" if splits.test else "valid"
        report = None
        if splits.test or (output_dir is not None and splits.valid):
            report = _evaluate(run, splits, held_out, features, calibration, scorer, trainer.device, options, precision)
        test_metrics = _test_metrics(report) if splits.test else None
        _save(
            run, splits, out, history, calibration, test_metrics, scorer, valid_fraction=valid_fraction, options=options
        )
        logger.info("Saved model to %s", out)
        if output_dir is not None:
            _write_reports(output_dir, history, report, held_out, spec)
        session.close()
        if group is not None:
            group.barrier()
        final = kept_metrics(history, run.kept_epoch)
        return TrainResult(model_dir=out, history=history, splits=splits, test=test_metrics, final=final)


def _join_processes(config: TrainConfig, environ: Mapping[str, str]) -> tuple[TrainConfig, ProcessGroup | None]:
    """Step 0: under torchrun, join the process group (each rank on its own GPU where there are GPUs)."""
    from dogclf.training.distributed import process_group

    if int(environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return config, None
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        config = dataclasses.replace(config, device=f"cuda:{int(environ.get('LOCAL_RANK', '0'))}")
        device = resolve_device(config.device)
    return config, process_group(environ, device)


@dataclass(frozen=True)
class _Options:
    """The settings of one :func:`train` call that its steps share."""

    config: TrainConfig
    head: HeadConfig
    weights: str | os.PathLike[str] | None
    freeze: bool
    cache: bool
    cache_dir: str | os.PathLike[str] | None
    precision: str
    engine: str
    extract_batch_size: int
    environ: Mapping[str, str]
    show_bars: bool
    group: ProcessGroup | None = None
    degraded_views: int = 0
    degraded_smoothing: float = 0.0

    def feature_mode(self) -> str:
        """``"cached"``, ``"in-memory"`` or ``"images"``: see :func:`_feature_mode`."""
        return _feature_mode(freeze=self.freeze, augment=self.config.augment, cache=self.cache)


@dataclass
class _Run:
    """What :func:`_build_run` set up: the model, where it checkpoints, whether it resumes, how it sees images."""

    spec: BackboneSpec
    model: DogClassifierNet
    checkpoint: Path
    resuming: bool
    fingerprint: dict[str, Any]
    weights_label: str
    mode: str
    solver: str = "loop"
    precision: str | None = None
    kept_epoch: int = 0  # the epoch whose weights are saved
    stopped_early: int | None = None
    head_fit: dict[str, Any] | None = None  # how an L-BFGS head was fitted


@phase("decode-check")
def _read_data(
    data_dir: str | os.PathLike[str],
    *,
    valid_fraction: float | None,
    names: Mapping[str, str] | str | os.PathLike[str] | None,
    strict: bool,
    options: _Options,
) -> DataSplits:
    """Step 1: the splits, every image decoded once to leave out unreadable files.

    On the feature path (without ``strict``) nothing is decoded here: extraction decodes the images the feature
    cache does not hold and reports the unreadable ones (:func:`_extract_features`), and cached images decoded when
    they were extracted.
    """
    check = strict or options.feature_mode() == "images"
    logger.info(
        f"Reading {data_dir} and decoding every image once to find unreadable files ..."
        if check
        else f"Reading {data_dir} (unreadable images are found and skipped while extracting features) ..."
    )
    seed = options.config.seed
    splits = load_splits(
        data_dir, valid_fraction=valid_fraction, names=names, seed=seed, strict=strict, check_images=check
    )
    _describe_skipped(splits)
    logger.info(
        f"Data {splits.root}: {len(splits.classes)} classes, {len(splits.train)} train, {len(splits.valid)} valid "
        f"({splits.valid_source}), {len(splits.test)} test images"
        + (f"; {len(splits.skipped)} unreadable file(s) skipped" if splits.skipped else "")
    )
    return splits


def head_solver(config: TrainConfig, head: HeadConfig, *, mode: str) -> str:
    """The solver that fits the head: ``"lbfgs"`` or ``"loop"`` (``config.head_solver`` with ``"auto"`` resolved).

    ``auto`` means L-BFGS for a linear head without dropout trained on features (frozen backbone, no augmentation),
    the loop otherwise.

    Raises:
        ValueError: ``lbfgs`` asked for where it cannot fit (images every epoch, or a hidden layer or dropout).
    """
    linear = head.hidden == 0 and not head.dropout
    if config.head_solver == "loop":
        return "loop"
    if config.head_solver == "auto":
        return "lbfgs" if linear and mode != "images" else "loop"
    if mode == "images":
        raise ValueError(
            "--head-solver lbfgs fits a frozen linear head on features extracted once; with --no-freeze or "
            "--augment the images go through the backbone every epoch: use --head-solver loop (or auto)."
        )
    if not linear:
        raise ValueError(
            "--head-solver lbfgs fits a single linear head; --head-hidden and --dropout need --head-solver loop."
        )
    return "lbfgs"


@phase("model")
def _build_run(
    spec: BackboneSpec,
    splits: DataSplits,
    checkpoint: Path,
    *,
    resume: bool,
    mode: str,
    solver: str,
    options: _Options,
) -> _Run:
    """Step 2: the seeded model (weights from the checkpoint when resuming) and the run's fingerprint."""
    config = options.config
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if resume and solver == "lbfgs":
        logger.info("--resume: an L-BFGS head has no checkpoint (its fit takes seconds); fitting it again")
        resume = False
    resuming = resume and checkpoint.is_file()
    if resume and not resuming:
        raise ModelDirError(
            f"--resume was given but {str(checkpoint)!r} does not exist. Run without --resume to start training."
        )
    model = build_model(
        spec,
        len(splits.classes),
        weights=None if resuming else options.weights,  # a resumed run takes every weight from the checkpoint
        freeze=options.freeze,
        head=options.head,
    )
    label = weights_label(options.weights)
    fingerprint = {
        "backbone": spec.name,
        "weights": label,
        "freeze": options.freeze,
        "head": options.head.to_dict(),
        "classes": [c.folder for c in splits.classes],
        "n_train": len(splits.train),
        "n_valid": len(splits.valid),
        "train_files": splits.files_digest("train"),  # which files, not only how many
        "valid_files": splits.files_digest("valid"),
        **{k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED},
    }
    return _Run(spec, model, checkpoint, resuming, fingerprint, label, mode, solver)


# What a resumed run may change: they do not alter the epochs already trained.
_NOT_FINGERPRINTED = ("epochs", "device", "num_workers", "keep", "patience")


@phase("trainer setup")
def _make_trainer(
    run: _Run, splits: DataSplits, callbacks: Sequence[Callback], options: _Options
) -> tuple[Trainer | LbfgsHeadFitter, dict[str, FeatureSet] | None]:
    """Step 3: a trainer over images, or over features extracted once (the epoch loop, or the L-BFGS fit)."""
    main = options.group is None or options.group.is_main
    hooks: list[Callback] = [EpochLogLine()] if main else []  # one log, from rank 0, under torchrun
    if options.show_bars:
        hooks.insert(0, ProgressBars())
    hooks += callbacks
    if run.mode == "images":
        trainer = Trainer(
            run.model,
            train_samples=splits.train,
            valid_samples=splits.valid,
            preprocessing=run.spec.preprocessing,
            config=options.config,
            checkpoint_path=run.checkpoint,
            callbacks=hooks,
            fingerprint=run.fingerprint,
            group=options.group,
        )
        return trainer, None
    from dogclf.training.head import make_head_trainer

    features = _extract_features(run, splits, options)
    views = _degraded_view_features(run, splits, options)
    if run.solver == "lbfgs":
        from dogclf.training.lbfgs import LbfgsHeadFitter

        fitter = LbfgsHeadFitter(
            run.model,
            features["train"],
            features["valid"],
            options.config,
            callbacks=hooks,
            extra=views,
            extra_smoothing=options.degraded_smoothing if views is not None else 0.0,
        )
        return fitter, features
    train = features["train"]
    if views is not None:
        from dogclf.features.pipeline import FeatureSet

        train = FeatureSet(torch.cat([train.features, views.features]), torch.cat([train.labels, views.labels]))
    trainer = make_head_trainer(
        run.model,
        train,
        features["valid"],
        options.config,
        callbacks=hooks,
        checkpoint_path=run.checkpoint,
        fingerprint=run.fingerprint,
        group=options.group,
    )
    return trainer, features


def _check_degraded_views(views: int, *, mode: str, distributed: bool) -> None:
    """Raises ``ValueError`` for a ``degraded_views`` the run cannot use."""
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise ValueError(f"--degraded-views must be an integer >= 0, got {views!r}")
    if views and mode == "images":
        raise ValueError(
            "--degraded-views adds views to the features extracted once; with --no-freeze or --augment the images go "
            "through the backbone every epoch. Drop --degraded-views, or train a frozen backbone without --augment."
        )
    if views and distributed:
        raise ValueError("--degraded-views runs in one process; run it without torchrun.")


def _view_smoothing(requested: float | None, *, views: int, solver: str) -> float:
    """The degraded views' label smoothing for this run (see :func:`train`); raises ``ValueError`` for a bad one."""
    from dogclf.data.degrade import DEFAULT_VIEW_SMOOTHING

    if requested is None:
        return DEFAULT_VIEW_SMOOTHING if views and solver == "lbfgs" else 0.0
    if isinstance(requested, bool) or not isinstance(requested, (int, float)) or not 0.0 <= requested < 1.0:
        raise ValueError(f"--degraded-smoothing must be a number in [0, 1), got {requested!r}")
    if requested and solver != "lbfgs":
        raise ValueError(
            f"--degraded-smoothing {requested:g} smooths the degraded views' targets in the L-BFGS head's fit; the "
            "epoch loop smooths every row alike (--label-smoothing). Drop --degraded-smoothing, or use --head-solver "
            "lbfgs."
        )
    return float(requested)


def _degraded_view_features(run: _Run, splits: DataSplits, options: _Options) -> FeatureSet | None:
    """The features of ``options.degraded_views`` degraded views of each training photo (``None``: none asked for).

    The L-BFGS head cross-validates its penalty on the photos alone and adds these to its final fit; the loop trains
    on both.
    """
    import tempfile

    from dogclf.data.degrade import write_degraded_views

    if not options.degraded_views:
        return None
    seed, views = options.config.seed, options.degraded_views
    cache = _cache_folder(run, options)
    root = Path(cache if cache is not None else tempfile.mkdtemp(prefix="dogclf-views-")) / "degraded-views"
    samples = write_degraded_views(splits.train, root / run.spec.name, views=views, seed=seed)
    smoothing = f", targets smoothed {options.degraded_smoothing:g}" if options.degraded_smoothing else ""
    logger.info(f"degraded views: {views} per training photo ({len(samples)} images, seed {seed}{smoothing}) in {root}")
    return _extract_features(run, dataclasses.replace(splits, train=samples, valid=[], test=[]), options)["train"]


def _cache_folder(run: _Run, options: _Options) -> Path | None:
    """The feature-cache folder of a run that caches its features, else ``None``."""
    from dogclf.features.cache import default_cache_dir

    if run.mode != "cached":
        return None
    cache_dir = options.cache_dir
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(options.environ)


@phase("extraction")
def _extract_features(run: _Run, splits: DataSplits, options: _Options) -> dict[str, FeatureSet]:
    """The backbone's features of every image: from the feature cache, the rest extracted once."""
    from dogclf.features.extract import ExtractOptions
    from dogclf.features.pipeline import effective_precision, prepare_features
    from dogclf.training.distributed import gather_features, shard_splits

    if run.resuming:
        _restore_checkpoint_weights(run.model, run.checkpoint, run.fingerprint)
    config = options.config
    extract = ExtractOptions(
        batch_size=options.extract_batch_size,
        num_workers=config.num_workers,
        precision=options.precision,
        device=config.device,
        engine=options.engine,
    )
    run.precision = effective_precision(extract)
    folder = _cache_folder(run, options)
    unreadable: list[tuple[Path, str]] = []
    group = options.group
    features = prepare_features(
        splits if group is None else shard_splits(splits, group),
        run.spec,
        run.model.backbone,
        weights_label=run.weights_label,
        cache_dir=folder,
        options=extract,
        progress=options.show_bars,
        unreadable=unreadable,
        while_decoding=_prepare_optimizers,
    )
    if group is not None:  # every rank extracted its share: put the splits back together, on every rank
        features, unreadable = gather_features(features, splits, unreadable, group)
    if unreadable:
        drop_unreadable(splits, unreadable, strict=False)
        _describe_skipped(splits)
        logger.info(
            f"{len(unreadable)} unreadable file(s) skipped: {len(splits.train)} train, {len(splits.valid)} valid, "
            f"{len(splits.test)} test images left"
        )
    return features


def _prepare_optimizers() -> None:
    """Makes a throwaway torch optimizer, while the extraction workers decode the first images.

    The first optimizer of a process imports ``torch._dynamo`` (about 1 s on a small CPU, for ``torch.compile``
    support): done here it overlaps the decoding instead of following the extraction.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


@phase("training")
def _fit(trainer: Trainer | LbfgsHeadFitter, run: _Run, options: _Options) -> list[dict[str, float]]:
    """Step 4: the epochs (continued from the checkpoint when resuming), or the L-BFGS fit."""
    config = options.config
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    frozen = "frozen backbone" if options.freeze else "whole network"
    what = f"{run.spec.name} ({frozen}, {trainable:,} trainable parameters)"
    if run.solver == "lbfgs":
        logger.info(f"Fitting the head of {what} by L-BFGS on {run.mode} features on {trainer.device}")
        history = trainer.fit()
        run.kept_epoch, run.head_fit = 1, trainer.fit_info.to_dict()  # type: ignore[union-attr]
        return history
    if run.resuming:
        done = trainer.resume()  # type: ignore[union-attr]
        logger.info(f"Resuming from {run.checkpoint} after epoch {done} of {config.epochs}")
    logger.info(
        f"Training {what} for {config.epochs} epochs on {trainer.device}: batch {config.batch_size}, "
        f"{_recipe(config)}" + ("" if run.mode == "images" else f", on {run.mode} features")
    )
    history = trainer.fit()
    run.kept_epoch, run.stopped_early = trainer.kept_epoch, trainer.stopped_early
    if trainer.stopped_early is not None:
        logger.info(
            f"Early stopping after epoch {trainer.stopped_early}: no lower valid_loss for {config.patience} epochs"
        )
    if trainer.kept_epoch != (int(history[-1]["epoch"]) if history else 0):
        kept = history[trainer.kept_epoch - 1]
        logger.info(f"Keeping epoch {trainer.kept_epoch} (--keep best: lowest valid_loss {kept['valid_loss']:.4f})")
    return history


def _recipe(config: TrainConfig) -> str:
    """``Adam lr 0.001`` plus whatever else is not the default (schedule, warm-up, smoothing, class weights)."""
    names = {"adam": "Adam", "adamw": "AdamW", "sgd": f"SGD (momentum {config.momentum:g})"}
    parts = [f"{names[config.optimizer]} lr {config.lr:g}"]
    if config.weight_decay:
        parts.append(f"weight decay {config.weight_decay:g}")
    if config.lr_schedule != "constant":
        parts.append(f"{config.lr_schedule} schedule")
    if config.warmup_epochs:
        parts.append(f"{config.warmup_epochs:g} warm-up epochs")
    if config.label_smoothing:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    if config.class_weight != "none":
        parts.append(f"{config.class_weight} class weights")
    return ", ".join(parts)


def _fit_novelty(
    run: _Run, splits: DataSplits, features: dict[str, FeatureSet] | None, options: _Options, temperature: float
) -> NoveltyScorer | None:
    """Step 5b: the novelty score (:data:`~dogclf.inference.novelty.DEFAULT_METHOD`), its threshold on valid photos.

    Its energy part divides the head's logits by the calibrated ``temperature``. On the image path the trained
    backbone runs once more over the train and valid images (eval transform).
    """
    from dogclf.inference.novelty import DEFAULT_METHOD, fit_novelty
    from dogclf.training.head import head_logits

    if not splits.valid:
        logger.info("novelty: skipped (no validation images to set its threshold on); the softmax threshold decides")
        return None
    if features is None:
        features = _image_features(run, splits, options)
    train, valid = features["train"], features["valid"]
    scorer = fit_novelty(
        train.features,
        valid.features,
        train_labels=train.labels,
        valid_logits=head_logits(run.model.get_submodule("head"), valid.features),
        temperature=temperature,
        method=DEFAULT_METHOD,
    )
    logger.info(scorer.summary())
    return scorer


def _image_features(run: _Run, splits: DataSplits, options: _Options) -> dict[str, FeatureSet]:
    """The trained backbone's features of the train and valid images, for a run that trained on images."""
    import dataclasses

    from dogclf.features.extract import ExtractOptions
    from dogclf.features.pipeline import prepare_features

    config = options.config
    extract = ExtractOptions(
        batch_size=options.extract_batch_size, num_workers=config.num_workers, precision="fp32", device=config.device
    )
    logger.info("novelty: extracting the trained backbone's features of the train and valid images ...")
    return prepare_features(
        dataclasses.replace(splits, test=[]),
        run.spec,
        run.model.backbone,
        weights_label=run.weights_label,
        cache_dir=None,  # the backbone was trained: these features are this run's alone
        options=extract,
        log_level=logging.DEBUG,  # not the training features' summary line: this pass is the novelty score's
        progress=options.show_bars,
    )


def _save_novelty(scorer: NoveltyScorer | None, out: Path) -> None:
    """Writes ``novelty.safetensors`` (or removes a stale one: the model's config then names none)."""
    from dogclf.inference.novelty import NOVELTY_NAME

    if scorer is not None:
        out.mkdir(parents=True, exist_ok=True)
        scorer.save(out)
    else:
        (out / NOVELTY_NAME).unlink(missing_ok=True)


@phase("evaluation")
def _evaluate(
    run: _Run,
    splits: DataSplits,
    split: str,
    features: dict[str, FeatureSet] | None,
    calibration: Calibration,
    scorer: NoveltyScorer | None,
    device: torch.device,
    options: _Options,
    precision: str,
) -> EvalReport:
    """Step 6: the held-out split's report, from its features on the feature path or its images otherwise.

    Either way the scores and unknown flags go through the inference post-processing; through the images, the
    inference engine runs in the calibrated ``precision``.
    """
    from dogclf.evaluation import evaluate, report_from_logits

    if features is not None:
        from dogclf.inference.engine import EngineOutput
        from dogclf.inference.postprocess import PostProcessor
        from dogclf.training.head import head_logits

        held_out = features[split]
        logits = head_logits(run.model.head, held_out.features)
        post = PostProcessor.from_config({"calibration": calibration.to_dict()}, splits.class_names, novelty=scorer)
        return report_from_logits(
            logits,
            held_out.labels,
            class_names=splits.class_names,
            temperature=calibration.temperature,
            unknown_threshold=calibration.unknown_threshold,
            unknown=post.scores(EngineOutput(logits, held_out.features)).unknown if post.flags_unknown else None,
            precision=precision,
        )
    from dogclf.classifier import Classifier

    classifier = Classifier(
        run.model,
        spec=run.spec,
        class_names=splits.class_names,
        config={"calibration": calibration.to_dict()},
        device=device,
        precision=precision,
        novelty=scorer,
    )
    config = options.config
    return evaluate(classifier, splits.split(split), batch_size=config.batch_size, num_workers=config.workers())


def _test_metrics(report: EvalReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    metrics = {"top1": report.top1, "top5": report.top5, "n": report.n, "loss": report.loss}
    logger.info(format_test_line(metrics))
    return metrics


@phase("reports")
def _write_reports(
    folder: str | os.PathLike[str],
    history: list[dict[str, float]],
    report: EvalReport | None,
    split: str,
    spec: BackboneSpec,
) -> None:
    """Step 8 (with ``output_dir``): history, evaluation report and plots beside the model."""
    from dogclf.pipeline.reports import write_reports

    written = write_reports(folder, history=history, report=report, split=split, title=spec.name)
    logger.info("Wrote %s to %s", ", ".join(path.name for path in written), folder)


@phase("saving")
def _save(
    run: _Run,
    splits: DataSplits,
    out: Path,
    history: list[dict[str, float]],
    calibration: Calibration,
    test_metrics: dict[str, Any] | None,
    scorer: NoveltyScorer | None,
    *,
    valid_fraction: float | None,
    options: _Options,
) -> None:
    """Step 7: the model directory (weights, config with classes, metrics, calibration, novelty and settings)."""
    final = kept_metrics(history, run.kept_epoch)
    _save_novelty(scorer, out)  # before config.json, which names it
    save_model(
        run.model,
        out,
        spec=run.spec,
        classes=splits.classes,
        head=options.head.to_dict(),
        metrics={"final": final, "history": history, "test": test_metrics},
        calibration=calibration.to_dict() if calibration.fitted else None,  # skipped: nothing stored
        novelty=scorer.to_config() if scorer is not None else None,
        training={
            **options.config.to_dict(),
            "weights": run.weights_label,
            "freeze": options.freeze,
            "data": str(splits.root),
            "valid_source": splits.valid_source,
            "valid_fraction": valid_fraction if splits.valid_source.startswith("fraction") else None,
            "n_train": len(splits.train),
            "n_valid": len(splits.valid),
            "n_test": len(splits.test),
            # After unreadable files were left out (extraction finds them): what `evaluate --split valid` rebuilds.
            "train_files": splits.files_digest("train"),
            "valid_files": splits.files_digest("valid"),
            "skipped_files": len(splits.skipped),
            "features": run.mode,
            "degraded_views": options.degraded_views,
            "degraded_smoothing": options.degraded_smoothing,
            "precision": run.precision,
            "head_solver_used": run.solver,
            "kept_epoch": run.kept_epoch,
            "stopped_early": run.stopped_early,
            "head_fit": run.head_fit,
        },
    )
