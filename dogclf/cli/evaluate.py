"""``dogclf evaluate``: a trained model scored on a labelled folder (text report, or one JSON object)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dogclf._json import dumps
from dogclf.cli.options import add_engine_arg, add_precision_arg

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(sub: Any) -> None:
    """Adds ``dogclf evaluate``."""
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
    add_precision_arg(ev)
    add_engine_arg(ev)
    ev.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    ev.add_argument(
        "--unknown-dir",
        type=Path,
        default=None,
        help="also score the images under DIR, which should be flagged unknown: AUROC and flag rates of the "
        "softmax and novelty scores",
    )


def _limited(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def run_evaluate(args: argparse.Namespace) -> int:
    """Runs ``dogclf evaluate``; returns 0."""
    from dogclf.artifact import load_config
    from dogclf.classifier import load_model
    from dogclf.evaluation import evaluate, plot_confusion_matrix, plot_reliability
    from dogclf.evaluation.data import select_eval_set

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    classifier = load_model(args.model, device=args.device, precision=args.precision, engine=args.engine)
    config = classifier.model_config or load_config(args.model)
    chosen = select_eval_set(
        args.data,
        config,
        split=args.split,
        strict=args.strict,
        unknown="skip" if args.skip_unknown_folders else "error",
    )
    report = evaluate(classifier, chosen.samples, batch_size=args.batch_size, progress=None)
    plot = args.plot or args.model / f"confusion_{chosen.split}.png"
    title = f"{config.backbone} on {chosen.split}: top-1 {report.top1:.1%}"
    plot_confusion_matrix(report, plot, title=title)
    reliability = args.reliability_plot or args.model / f"reliability_{chosen.split}.png"
    plot_reliability(report, reliability, title=_reliability_title(config.backbone, chosen.split, report))
    open_set = None
    if args.unknown_dir is not None:
        from dogclf.evaluation.openset import evaluate_unknown

        open_set = evaluate_unknown(classifier, chosen.samples, args.unknown_dir, batch_size=args.batch_size)
    if args.json:
        payload: dict[str, Any] = report.to_dict()
        payload.update(
            split=chosen.split,
            data=str(chosen.folder),
            evaluated=chosen.description,
            classes_without_folder=[c.name for c in chosen.missing],
            skipped_folders=chosen.unknown,
            confusion_png=str(plot),
            reliability_png=str(reliability),
            skipped=len(chosen.skipped),
            precision_reason=classifier.precision_choice.reason,
        )
        if open_set is not None:
            payload["unknown_dir"] = {"path": str(args.unknown_dir), **open_set.to_dict()}
        print(dumps(payload, indent=2))
        return 0
    print(f"Evaluated {chosen.description}: {report.n} images")
    if chosen.missing:
        names = [c.name for c in chosen.missing]
        print(f"{len(names)} of the model's {len(report.class_names)} classes have no folder there: {_limited(names)}")
    if chosen.unknown:
        print(f"Skipped {len(chosen.unknown)} folder(s) the model does not know: {_limited(chosen.unknown)}")
    if chosen.skipped:
        print(f"Skipped {len(chosen.skipped)} unreadable file(s): " + ", ".join(str(p) for p, _ in chosen.skipped[:5]))
    print(f"{chosen.split}: n={report.n} top1={report.top1:.4f} top5={report.top5:.4f} loss={report.loss:.4f}")
    engine = f"{classifier.engine.name} engine on {classifier.device}"
    print(f"precision: {classifier.precision_choice.describe()}, {engine}")
    calibration = f"ECE {report.ece_uncalibrated:.3f} -> {report.ece:.3f} (temperature {report.temperature:.2f}); "
    if report.unknown_rate is None:
        calibration += "unknown rate n/a (the model has no unknown threshold)"
    elif classifier.post.by_novelty:
        calibration += f"unknown rate {report.unknown_rate:.1%} (novelty score over {classifier.novelty.threshold:.4f})"  # type: ignore[union-attr]
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
    print(f"Reliability diagram: {reliability}")
    return 0


def _reliability_title(backbone: str, split: str, report: Any) -> str:
    return (
        f"{backbone} on {split} (n={report.n}): ECE {report.ece_uncalibrated:.3f} -> {report.ece:.3f} "
        f"at T={report.temperature:.2f}"
    )
