"""The ``dogclf`` command line."""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dogclf import __version__
from dogclf._cli_args import add_data_args
from dogclf.diagnostics.cli_args import add_diagnostics_args, diagnostics_from_args
from dogclf.errors import DogclfError

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


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
        "--degraded-views",
        type=int,
        default=0,
        metavar="N",
        help="also fit the head on N degraded views (crop, 64-160 px, JPEG 15-60) of each training photo, extracted "
        "once and cached, for scores that hold better on users' photos (default 0)",
    )
    p.add_argument(
        "--degraded-smoothing",
        type=float,
        default=None,
        metavar="EPS",
        help="label smoothing of the degraded views' targets, the photos' kept one-hot (default 0.2 with the L-BFGS "
        "head, 0 with the epoch loop)",
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
    add_diagnostics_args(p)


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

    ev = sub.add_parser("evaluate", help="evaluate a trained model on a labelled folder or one split of a data folder")
    ev.add_argument("--model", required=True, type=Path, help="model directory")
    ev.add_argument(
        "--data",
        required=True,
        type=Path,
        help="a folder of class folders (evaluated as a whole), or a data folder with train/ valid/ test/",
    )
    ev.add_argument(
        "--split",
        default=None,
        choices=["all", "train", "valid", "test"],
        help="default: test for a data folder with split folders, all for a folder of class folders; valid on the "
        "folder the model was trained on with --valid-fraction is the part it held out",
    )
    ev.add_argument(
        "--skip-unknown-folders",
        action="store_true",
        help="leave out class folders that match none of the model's classes (default: an error naming them)",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--plot", type=Path, default=None, help="confusion-matrix PNG (default MODEL/confusion_<split>.png)"
    )
    ev.add_argument(
        "--reliability-plot",
        type=Path,
        default=None,
        help="reliability-diagram PNG of the calibrated scores (default MODEL/reliability_<split>.png)",
    )
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    _add_precision_arg(ev)
    add_engine_arg(ev)
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
    pr.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image files, or folders (searched recursively)"
    )
    pr.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    pr.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    pr.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="also write the results to FILE.jsonl, FILE.csv or FILE.json (the format follows the extension)",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    pr.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    pr.add_argument("--device", default="cpu", help="with --model: cpu (default), auto, cuda or cuda:N")
    _add_precision_arg(pr)
    add_engine_arg(pr)

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
    sv.add_argument(
        "--decode-workers", type=int, default=None, help="image decoding threads (default: a quarter of the cores)"
    )
    sv.add_argument(
        "--forward-workers", type=int, default=1, help="forward passes that may run at once, each on its own batch"
    )
    sv.add_argument(
        "--forward-threads",
        type=int,
        default=None,
        help="torch threads per forward worker (default: the cores not used for decoding, shared among workers)",
    )
    sv.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds before a request gets 504 (default 30; 0: none)"
    )
    sv.add_argument(
        "--decode-memory-mb",
        type=float,
        default=1024.0,
        help="MiB that large photos may hold while decoding at once (default 1024)",
    )
    sv.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds for a request's headers to arrive (default 10)"
    )
    sv.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds for a body to arrive after its headers (default 60)"
    )
    sv.add_argument(
        "--max-connections", type=int, default=512, help="open connections; more are answered 503 (default 512)"
    )
    sv.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    _add_precision_arg(sv)
    add_engine_arg(sv)
    sv.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log one line per request"
    )

    ex = sub.add_parser("export", help="export a model to ONNX (dynamic batch) for other runtimes")
    ex.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory written by `dogclf train`")
    ex.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    ex.add_argument("-o", "--output", type=Path, default=None, help="file to write (default MODEL_DIR/model.onnx)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18 or later)")
    ex.add_argument("--overwrite", action="store_true", help="replace the file if it exists")

    pk = sub.add_parser("package", help="write the model.tar.gz the SageMaker PyTorch inference container serves")
    pk.add_argument("model", type=Path, metavar="MODEL_DIR", help="model directory written by `dogclf train`")
    pk.add_argument("-o", "--output", required=True, type=Path, help="archive to write, e.g. model.tar.gz")
    pk.add_argument("--overwrite", action="store_true", help="replace the archive if it exists")

    from dogclf.tuning.cli import add_tune_parser  # argparse only; Optuna is imported when `tune` runs

    add_tune_parser(sub)
    from dogclf.sagemaker.cli import add_sagemaker_parser  # argparse only; boto3 and the SDK load when it runs

    add_sagemaker_parser(sub)
    return parser


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    """``--engine``: the runtime of the backbone's forward passes (``auto`` picks the fastest on this machine)."""
    p.add_argument(
        "--engine",
        choices=("auto", "torch", "openvino", "onnxruntime"),
        default="auto",
        help="runtime of the forward passes; auto (default): OpenVINO on x86 CPUs where installed, else torch "
        "(CUDA, ARM); onnxruntime runs the model exported to ONNX (dogclf[onnx]); $DOGCLF_ENGINE sets the default",
    )


def _add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default=None,
        help="default: the model's calibration precision where this hardware runs it natively (bf16 and fp32 "
        "scores agree; bf16 on CPUs with native bf16 and on CUDA, else fp32); auto: the same without the model",
    )


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


# Options only the epoch loop reads: given on the command line, they ask for it (as a SageMaker job's hyperparameters
# lr, batch-size and epochs do), instead of being ignored by the default L-BFGS fit.
LOOP_OPTIONS = (
    "--lr",
    "--batch-size",
    "--epochs",
    "--weight-decay",
    "--optimizer",
    "--momentum",
    "--lr-schedule",
    "--warmup-epochs",
    "--label-smoothing",
    "--keep",
    "--patience",
)


def _head_solver(args: argparse.Namespace) -> str:
    """``--head-solver``; ``auto`` becomes ``loop`` when the command line sets an option only the loop reads."""
    given = [a.split("=", 1)[0] for a in args.argv if a.split("=", 1)[0] in LOOP_OPTIONS]
    if args.head_solver != "auto" or not given:
        return str(args.head_solver)
    print(
        f"{', '.join(dict.fromkeys(given))} given: the head is trained by the epoch loop (--head-solver loop); "
        "without them a frozen linear head is fitted by L-BFGS with a cross-validated penalty.",
        flush=True,
    )
    return "loop"


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
        head_solver=_head_solver(args),
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
            engine=args.engine,
            extract_batch_size=args.extract_batch_size,
            novelty=args.novelty,
            degraded_views=args.degraded_views,
            degraded_smoothing=args.degraded_smoothing,
            environ=args.environ,
            checkpoint_dir=args.checkpoint_dir,
            output_dir=args.output_dir,
            diagnostics=diagnostics_from_args(args),
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
    from dogclf._cli_evaluate import run_evaluate

    return run_evaluate(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    from dogclf._cli_predict import run_predict

    return run_predict(args)


def _print_predictions(results: list[dict[str, Any]], *, as_json: bool) -> int:
    """Prints answers as ``dogclf predict`` does; returns 1 if any image failed (also for ``sagemaker invoke``)."""
    from dogclf._cli_predict import print_predictions

    return print_predictions(results, as_json=as_json)


def _cmd_serve(args: argparse.Namespace) -> int:
    from dogclf.serving.batcher import BatchConfig
    from dogclf.serving.codec import Limits
    from dogclf.serving.handlers import default_top_k
    from dogclf.serving.server import ConnectionLimits, serve

    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    batching = BatchConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        decode_workers=args.decode_workers,
        forward_workers=args.forward_workers,
        forward_threads=args.forward_threads,
        request_timeout_s=args.request_timeout,
        decode_memory_mb=args.decode_memory_mb,
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
        engine=args.engine,
        access_log=args.access_log,
        connections=ConnectionLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_connections=args.max_connections,
        ),
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dogclf.inference.export import export_model

    report = export_model(args.model, args.output, format=args.format, opset=args.opset, overwrite=args.overwrite)
    print(report.summary())
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
    "export": _cmd_export,
    "package": _cmd_package,
    "tune": _cmd_tune,
    "sagemaker": _cmd_sagemaker,
}


@functools.cache  # once per process
def _exit_quickly() -> None:
    """At interpreter exit, freezes the garbage collector's objects before its final collections run.

    Once torch (and ``torch._dynamo``, which the first optimizer imports) is loaded, those collections walk millions
    of objects: about 0.5-1 s of CPU after a ``dogclf train`` has finished. Objects are still freed and files
    flushed at exit; only reference cycles among them are left to the operating system.
    """
    atexit.register(gc.freeze)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        environ: The environment commands read (default ``os.environ``).
    """
    _exit_quickly()
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.environ = os.environ if environ is None else environ
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so a reader that went away (`| head`) is handled below, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (DogclfError, ValueError) as exc:
        print(f"dogclf {args.command}: error: {exc}", file=sys.stderr)
        if args.environ.get("DOGCLF_DEBUG"):
            raise
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stdout_closed() -> int:
    """The reader of stdout went away (``dogclf ... | head``): stop quietly, as ``cat`` and ``grep`` do."""
    # Python would report the failed flush of the dead pipe at exit; point stdout at /dev/null instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
