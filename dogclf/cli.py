"""The ``dogclf`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dogclf import __version__
from dogclf._cli_args import add_data_args
from dogclf.errors import DogclfError

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Adds ``dogclf train``'s options (the SageMaker entry script parses the same ones)."""
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="model directory to write (also holds checkpoint.pt)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="the loop's weight decay (default 0)")
    _add_head_args(p)
    p.add_argument(
        "--freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze the backbone and train the head only (default); --no-freeze trains everything",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=0.1,
        help="with --no-freeze, backbone lr = lr x this (default 0.1)",
    )
    p.add_argument("--head-hidden", type=int, default=0, help="width of a hidden head layer (default 0: linear head)")
    p.add_argument("--dropout", type=float, default=0.0, help="head dropout probability (default 0)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="random resized crop + flip on training images (images then go through the backbone every epoch)",
    )
    p.add_argument(
        "--extract-batch-size", type=int, default=64, help="images per batch during feature extraction (default 64)"
    )
    p.add_argument(
        "--novelty",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the feature-space novelty score that flags unknown breeds (default); --no-novelty: softmax threshold",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where the per-epoch checkpoint.pt goes and --resume reads it (default: --out)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="also write history (JSON, CSV, plot), the held-out evaluation report and confusion matrix here",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (or --checkpoint-dir)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")


def train_parser(prog: str = "dogclf train", *, add_help: bool = True) -> argparse.ArgumentParser:
    """A parser of ``dogclf train``'s options alone (the SageMaker entry script reads its hyperparameters with it)."""
    parser = argparse.ArgumentParser(prog=prog, description="Train a classifier on a data folder.", add_help=add_help)
    add_train_args(parser)
    return parser


def _add_head_args(p: argparse.ArgumentParser) -> None:
    """How the head is fitted: the solver, the L-BFGS penalty, and the loop's recipe (see docs/training.md)."""
    from dogclf.training.config import CLASS_WEIGHTS, HEAD_SOLVERS, KEEP, LR_SCHEDULES, OPTIMIZERS

    p.add_argument(
        "--head-solver",
        choices=HEAD_SOLVERS,
        default="auto",
        help="auto (default): lbfgs for a frozen linear head on features, else loop; lbfgs: full-batch logistic "
        "regression with an L2 penalty (seconds; --epochs, --lr, --batch-size do not apply); loop: minibatch epochs",
    )
    p.add_argument(
        "--penalty-c",
        type=float,
        default=None,
        help="lbfgs: inverse L2 strength, as scikit-learn's C (default: chosen by cross-validation)",
    )
    p.add_argument("--cv-folds", type=int, default=5, help="lbfgs: folds of the cross-validation of C (default 5)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="the loop's optimizer (default adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default="constant", help="per-step learning rate (default constant)"
    )
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="epochs of linear lr warm-up (default 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the training loss (0)")
    p.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        default="none",
        help="balanced: weight each class's loss by n / (classes x n_class) (default none)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP,
        default="best",
        help="which epoch's weights to save: best (default, lowest valid_loss) or last",
    )
    p.add_argument(
        "--patience", type=int, default=None, help="stop after this many epochs without a lower valid_loss (off)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogclf",
        description="Turn a folder of dog photos into a dog-breed classifier: train a new head on a pretrained CNN, "
        "evaluate it, predict.",
    )
    parser.add_argument("--version", action="version", version=f"dogclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train, evaluate and predict on a synthetic data set (offline, ~1 minute)")
    demo.add_argument(
        "--backbone",
        default=None,
        help="default: efficientnet_lite0 with its bundled ImageNet weights if the plugin is installed, else resnet18",
    )
    demo.add_argument("--weights", default="none", help="with --backbone: none (default), imagenet, or a weights file")
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--workdir", type=Path, default=None, help="keep data and model here instead of a temp folder")

    bb = sub.add_parser("backbones", help="list the available backbones")
    bb.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'resnet*'")
    bb.add_argument("--json", action="store_true", help="print JSON")

    check = sub.add_parser("check-backbone", help="run the backbone contract checks (for plugin authors)")
    check.add_argument("name")

    add_train_args(sub.add_parser("train", help="train a classifier on a data folder"))

    ev = sub.add_parser("evaluate", help="evaluate a trained model on a data split")
    ev.add_argument("--model", required=True, type=Path, help="model directory")
    ev.add_argument("--data", required=True, type=Path, help="data folder (with train/ ...) or a class-per-folder tree")
    ev.add_argument(
        "--split", default="test", choices=["train", "valid", "test"], help="split to evaluate (default test)"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--plot", type=Path, default=None, help="confusion-matrix PNG (default MODEL/confusion_<split>.png)"
    )
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    ev.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    ev.add_argument(
        "--unknown-dir",
        type=Path,
        default=None,
        help="also score the images under DIR, which should be flagged unknown: AUROC and flag rates of the "
        "softmax and novelty scores",
    )

    pr = sub.add_parser("predict", help="predict the breed of images (with a model directory or a running server)")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory")
    source.add_argument("--url", help="a running `dogclf serve` (or SageMaker container), e.g. http://127.0.0.1:8080")
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument("--device", default="cpu", help="with --model: cpu (default), auto, cuda or cuda:N")

    sv = sub.add_parser("serve", help="serve a model over HTTP with batching and a web page (SageMaker contract)")
    sv.add_argument("--model", required=True, type=Path, help="model directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    sv.add_argument("--max-batch-size", type=int, default=32, help="most images per forward pass (default 32)")
    sv.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long an image waits for others to join a batch (default 5)"
    )
    sv.add_argument("--queue-size", type=int, default=256, help="images waiting before 503 Busy (default 256)")
    sv.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    sv.add_argument("--top-k", type=int, default=None, help="breeds per answer (default $DOGCLF_TOP_K or 5)")
    sv.add_argument("--decode-workers", type=int, default=None, help="image decoding threads (default: cores / 2)")
    sv.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    sv.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto (default): bf16 autocast + channels-last on CPUs with native bf16 and on CUDA, else fp32",
    )
    sv.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log one line per request"
    )

    pk = sub.add_parser("package", help="write the model.tar.gz the SageMaker PyTorch inference container serves")
    pk.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory written by `dogclf train`")
    pk.add_argument("-o", "--output", required=True, type=Path, help="archive to write, e.g. model.tar.gz")
    pk.add_argument("--overwrite", action="store_true", help="replace the archive if it exists")

    from dogclf.tuning.cli import add_tune_parser  # argparse only; Optuna is imported when `tune` runs

    add_tune_parser(sub)
    from dogclf.sagemaker.cli import add_sagemaker_parser  # argparse only; boto3 and the SDK load when it runs

    add_sagemaker_parser(sub)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from dogclf.demo import run_demo

    weights = None if args.weights.lower() == "none" else args.weights
    run_demo(backbone=args.backbone, weights=weights, epochs=args.epochs, workdir=args.workdir)
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from dogclf.backbones.registry import list_backbones

    specs = list_backbones(args.pattern)
    if args.json:
        print(json.dumps([s.summary() for s in specs], indent=2))
        return 0
    rows = [("NAME", "INPUT", "FEATURES", "PRETRAINED WEIGHTS", "FROM")]
    rows += [
        (
            s.name,
            f"{s.preprocessing.input_size}px",
            str(s.num_features),
            s.weights_source,
            s.distribution,
        )
        for s in specs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("\nAlso: any timm model as timm/<name>, e.g. timm/efficientnet_b0 (weights from the Hugging Face Hub).")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from dogclf.backbones.contract import check_backbone

    report = check_backbone(args.name)
    print(
        f"OK {report['name']} ({report['distribution']}): {report['num_features']} features at "
        f"{report['input_size']}px, {report['parameters']:,} parameters"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dogclf.model import HeadConfig
    from dogclf.training import train
    from dogclf.training.config import TrainConfig

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        backbone_lr_scale=args.backbone_lr_scale,
        seed=args.seed,
        device=args.device,
        num_workers=args.workers,
        augment=args.augment,
        head_solver=args.head_solver,
        penalty_c=args.penalty_c,
        cv_folds=args.cv_folds,
        optimizer=args.optimizer,
        momentum=args.momentum,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        class_weight=args.class_weight,
        keep=args.keep,
        patience=args.patience,
    )
    try:
        train(
            args.data,
            args.backbone,
            args.out,
            config=config,
            weights=args.weights,
            freeze=args.freeze,
            head=HeadConfig(hidden=args.head_hidden, dropout=args.dropout),
            valid_fraction=args.valid_fraction,
            names=args.names,
            strict=args.strict,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=args.progress,
            cache=args.cache,
            cache_dir=args.cache_dir,
            precision=args.precision,
            extract_batch_size=args.extract_batch_size,
            novelty=args.novelty,
            environ=args.environ,
            checkpoint_dir=args.checkpoint_dir,
            output_dir=args.output_dir,
        )
    except KeyboardInterrupt:
        argv = list(args.argv)  # not sys.argv: under `python -m dogclf` its [0] is the path of __main__.py
        checkpoint = (args.checkpoint_dir or args.out) / "checkpoint.pt"
        if checkpoint.is_file():
            command = shlex.join(["dogclf", *argv] if "--resume" in argv else ["dogclf", *argv, "--resume"])
            print(
                f"\nInterrupted. Finished epochs are saved in {checkpoint}; continue with:\n  {command}",
                file=sys.stderr,
            )
        else:
            command = shlex.join(["dogclf", *(a for a in argv if a != "--resume")])
            cached = args.freeze and not args.augment and args.cache
            saved = (
                "the features extracted so far are kept in the feature cache, and a rerun continues from them"
                if cached
                else "nothing was saved"
            )
            print(
                f"\nInterrupted before the first epoch finished; {saved}. Start again with:\n  {command}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dogclf.classifier import load_model
    from dogclf.data.folder import load_splits
    from dogclf.evaluation import evaluate, plot_confusion_matrix

    classifier = load_model(args.model, device=args.device)
    config = classifier.config
    training = config.get("training", {})
    fraction = None
    has_valid_dir = (args.data / "valid").is_dir() or (args.data / "val").is_dir()
    if not has_valid_dir and training.get("valid_fraction"):
        # Rebuild the same stratified split the model was trained with.
        fraction = float(training["valid_fraction"])
    splits = load_splits(
        args.data,
        valid_fraction=fraction,
        names=dict(zip(config.get("class_folders", []), config["class_names"], strict=False)),
        seed=int(training.get("seed", 0)),
        strict=args.strict,
        require_valid=False,
    )
    model_folders = config.get("class_folders") or config["class_names"]
    if [c.folder for c in splits.classes] != list(model_folders):
        from dogclf.errors import DatasetError

        raise DatasetError(
            f"The classes of {str(args.data)!r} ({len(splits.classes)}) differ from the model's "
            f"({len(model_folders)}): evaluate on data with the same class folders as the training data."
        )
    samples = splits.split(args.split)
    report = evaluate(classifier, samples, batch_size=args.batch_size, progress=sys.stderr.isatty())
    plot = args.plot or args.model / f"confusion_{args.split}.png"
    plot_confusion_matrix(report, plot, title=f"{config['backbone']} on {args.split}: top-1 {report.top1:.1%}")
    open_set = None
    if args.unknown_dir is not None:
        from dogclf.openset import evaluate_unknown

        open_set = evaluate_unknown(classifier, samples, args.unknown_dir, batch_size=args.batch_size)
    if args.json:
        payload: dict[str, Any] = report.to_dict()
        payload.update(split=args.split, confusion_png=str(plot), skipped=len(splits.skipped))
        if open_set is not None:
            payload["unknown_dir"] = {"path": str(args.unknown_dir), **open_set.to_dict()}
        print(json.dumps(payload, indent=2))
        return 0
    if splits.skipped:
        print(f"Skipped {len(splits.skipped)} unreadable file(s): " + ", ".join(str(p) for p, _ in splits.skipped[:5]))
    print(f"{args.split}: n={report.n} top1={report.top1:.4f} top5={report.top5:.4f} loss={report.loss:.4f}")
    calibration = f"ECE {report.ece_uncalibrated:.3f} -> {report.ece:.3f} (temperature {report.temperature:.2f}); "
    if report.unknown_rate is None:
        calibration += "unknown rate n/a (the model has no unknown threshold)"
    elif classifier.novelty is not None and classifier.novelty.threshold is not None:
        calibration += f"unknown rate {report.unknown_rate:.1%} (novelty score over {classifier.novelty.threshold:.4f})"
    else:
        calibration += f"unknown rate {report.unknown_rate:.1%} (threshold {report.unknown_threshold:.3f})"
    print(calibration)
    print("\nPer-class accuracy (worst first):")
    for name, stats in sorted(report.per_class().items(), key=lambda kv: (kv[1]["accuracy"], kv[0])):
        print(f"  {stats['accuracy']:7.1%}  n={int(stats['n']):<5d} {name}")
    confused = report.most_confused(10)
    if confused:
        print("\nMost confused (true -> predicted: count):")
        for pair in confused:
            print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    if open_set is not None:
        print("\n" + "\n".join(open_set.lines()))
    print(f"\nConfusion matrix: {plot}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dogclf.classifier import load_model
    from dogclf.data.images import load_rgb
    from dogclf.errors import UnreadableImageError

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.url:
        from dogclf.serving.client import predict_remote

        return _print_predictions(predict_remote(args.url, args.images, top_k=args.top_k), as_json=args.json)
    classifier = load_model(args.model, device=args.device)
    results: list[dict[str, Any]] = []
    decoded: dict[int, Any] = {}
    for i, path in enumerate(args.images):
        results.append({"image": str(path)})
        try:
            decoded[i] = load_rgb(path, min_size=classifier.preprocessing.resize_size)
        except (UnreadableImageError, FileNotFoundError) as exc:
            results[i]["error"] = str(exc)
    # The readable images go through the network in batches, not one forward pass each.
    ranked = classifier.classify(list(decoded.values()), top_k=args.top_k) if decoded else []
    for i, answer in zip(decoded, ranked, strict=True):
        results[i].update(answer.to_dict())
    return _print_predictions(results, as_json=args.json)


def _print_predictions(results: list[dict[str, Any]], *, as_json: bool) -> int:
    """Prints ``predict`` results (text or JSON); returns 1 if any image failed, else 0."""
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        for item in results:
            print(item["image"])
            if "error" in item:
                print(f"  error: {item['error']}")
                continue
            for p in item["predictions"]:
                print(f"  {p['score']:6.1%}  {p['label']}")
            if item.get("unknown"):
                print("  unknown: looks like none of the known breeds (top score under the model's threshold)")
    return 1 if any("error" in item for item in results) else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dogclf.serving.batcher import BatchConfig
    from dogclf.serving.codec import Limits
    from dogclf.serving.handlers import default_top_k
    from dogclf.serving.server import serve

    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    batching = BatchConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        decode_workers=args.decode_workers,
    )
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    top_k = default_top_k(args.environ) if args.top_k is None else args.top_k
    serve(
        args.model,
        host=args.host,
        port=args.port,
        batching=batching,
        limits=limits,
        top_k=top_k,
        device=args.device,
        precision=args.precision,
        access_log=args.access_log,
    )
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from dogclf.serving.package import format_report, package_model

    print(format_report(package_model(args.model, args.output, overwrite=args.overwrite)))
    return 0


def _cmd_sagemaker(args: argparse.Namespace) -> int:
    from dogclf.sagemaker.cli import run_sagemaker

    return run_sagemaker(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from dogclf.tuning.cli import run_tune

    return run_tune(args)


_COMMANDS = {
    "demo": _cmd_demo,
    "backbones": _cmd_backbones,
    "check-backbone": _cmd_check,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "serve": _cmd_serve,
    "package": _cmd_package,
    "tune": _cmd_tune,
    "sagemaker": _cmd_sagemaker,
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        environ: The environment commands read (default ``os.environ``).
    """
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.environ = os.environ if environ is None else environ
    try:
        return _COMMANDS[args.command](args)
    except (DogclfError, ValueError) as exc:
        print(f"dogclf {args.command}: error: {exc}", file=sys.stderr)
        if args.environ.get("DOGCLF_DEBUG"):
            raise
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
