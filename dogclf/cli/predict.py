"""``dogclf predict``: image files and folders in, ranked breeds out (text, a JSON list, or a JSONL/CSV file).

Folders are searched recursively for image files (natural order, hidden files left out). Images stream through the
inference engine (decoded in threads while batched forward passes run), so a folder of any size runs in bounded
memory, and text, JSONL and CSV answers are written as they come.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from dogclf._json import dumps
from dogclf._progress import progress_reporter
from dogclf.cli.options import add_engine_arg, add_precision_arg
from dogclf.errors import DogclfError
from dogclf.serving.answers import text_lines

__all__ = ["OUTPUT_FORMATS", "add_predict_parser", "expand_inputs", "run_predict"]

OUTPUT_FORMATS = (".jsonl", ".csv", ".json")


def add_predict_parser(sub: Any) -> None:
    """Adds ``dogclf predict``."""
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
    add_precision_arg(pr)
    add_engine_arg(pr)


class OutputError(DogclfError, ValueError):
    """An ``--output`` file that cannot be written."""


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str | None]]:
    """Each file as given, each folder as the image files under it; ``(path, error)`` where a path yields none.

    Args:
        paths: Image files and folders.

    Returns:
        ``(path, None)`` per image to predict, and ``(folder, message)`` for a folder with no image files.
    """
    from dogclf.data.folder import find_images
    from dogclf.data.images import IMAGE_EXTENSIONS

    items: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            items.append((path, None))
            continue
        images = find_images(path)
        if not images:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            items.append((path, f"{path}: folder has no image files (looked recursively for {extensions})"))
        items += [(image, None) for image in images]
    return items


class _FileOutput:
    """Results written to ``--output`` as they come (JSONL, CSV) or at the end (JSON), then renamed into place.

    The constructor only checks the path, so a bad ``--output`` is refused before the model loads.
    """

    def __init__(self, path: Path, *, top_k: int, overwrite: bool) -> None:
        suffix = path.suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise OutputError(
                f"--output {str(path)!r}: name a .jsonl, .csv or .json file (the format follows the extension)."
            )
        if path.is_dir():
            raise OutputError(f"--output {str(path)!r} is a folder; name a file, e.g. {str(path / 'results.csv')!r}.")
        if path.exists() and not overwrite:
            raise OutputError(f"--output {str(path)!r} already exists; pass --overwrite to replace it.")
        if not path.parent.is_dir():
            raise OutputError(f"--output folder {str(path.parent)!r} does not exist; create it first.")
        self.path, self.format, self.top_k = path, suffix, top_k
        self.items: list[dict[str, Any]] = []

    def open(self) -> None:
        """Starts the temporary file next to the output (renamed into place by :meth:`close`)."""
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(name)
        self.handle: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.format == ".csv":
            self.csv = csv.writer(self.handle)
            ranks = [f"{key}_{i}" for i in range(1, self.top_k + 1) for key in ("label", "score")]
            self.csv.writerow(["image", *ranks, "unknown", "error"])

    def write(self, item: dict[str, Any]) -> None:
        if self.format == ".jsonl":
            self.handle.write(dumps(item) + "\n")
        elif self.format == ".csv":
            ranked = item.get("predictions", [])[: self.top_k]
            cells: list[Any] = []
            for i in range(self.top_k):
                cells += [ranked[i]["label"], f"{ranked[i]['score']:.6f}"] if i < len(ranked) else ["", ""]
            unknown = "" if "error" in item else str(bool(item.get("unknown"))).lower()
            self.csv.writerow([item["image"], *cells, unknown, item.get("error", "")])
        else:
            self.items.append(item)

    def close(self, *, keep: bool) -> None:
        try:
            if keep and self.format == ".json":
                self.handle.write(dumps(self.items, indent=2) + "\n")
            self.handle.close()
            if keep:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


Predictor = Callable[[Sequence[Path]], Iterator[dict[str, Any]]]


def _local_predictor(args: argparse.Namespace) -> Predictor:
    """Answers from the model directory, in input order.

    The images stream through the inference engine: decoded in threads while batched forward passes run (see
    :meth:`dogclf.classifier.Classifier.classify_stream`).
    """
    from dogclf.classifier import load_model

    classifier = load_model(args.model, device=args.device, precision=args.precision, engine=args.engine)
    print(
        f"dogclf predict: {classifier.engine.name} {classifier.precision_choice.describe()} on {classifier.device}",
        file=sys.stderr,
    )

    def predict(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
        for i, answer in classifier.classify_stream(paths, top_k=args.top_k):
            item: dict[str, Any] = {"image": str(paths[i])}
            if isinstance(answer, str):
                item["error"] = answer
            else:
                item.update(answer.to_dict())
            yield item

    return predict


def _remote_predictor(args: argparse.Namespace) -> Predictor:
    """Answers from a running server (one request per image, ``--batch-size`` images at a time)."""
    from dogclf.serving.client import predict_remote

    def predict(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
        for start in range(0, len(paths), args.batch_size):
            yield from predict_remote(args.url, list(paths[start : start + args.batch_size]), top_k=args.top_k)

    return predict


def _answers(items: list[tuple[Path, str | None]], predict: Predictor) -> Iterator[dict[str, Any]]:
    """Each input's answer, in input order, as it comes, with a progress report on stderr."""
    answered = predict([path for path, error in items if error is None])
    with progress_reporter(len(items), desc="predict", unit="img") as progress:
        for path, error in items:
            yield {"image": str(path), "error": error} if error is not None else next(answered)
            progress.update(1)


def run_predict(args: argparse.Namespace) -> int:
    """Runs ``dogclf predict``; returns 1 if any image failed, else 0."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    items = expand_inputs(args.images)
    output = _FileOutput(args.output, top_k=args.top_k, overwrite=args.overwrite) if args.output else None
    predict = _remote_predictor(args) if args.url else _local_predictor(args)
    results: list[dict[str, Any]] = []
    errors = 0
    done = False
    if output is not None:
        output.open()
    try:
        for item in _answers(items, predict):
            errors += "error" in item
            if output is not None:
                output.write(item)
            if args.json:
                results.append(item)
            elif output is None:
                print("\n".join(text_lines(item)))
            elif "error" in item:
                print(f"error: {item['error']}", file=sys.stderr)
        done = True
    finally:
        if output is not None:
            output.close(keep=done)
    if args.json:
        print(dumps(results, indent=2))
    if output is not None:
        print(f"Wrote {len(items)} result(s) to {output.path}" + (f" ({errors} with errors)" if errors else ""))
    return 1 if errors else 0
