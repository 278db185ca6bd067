"""Inference speed over a folder of photos: ``dogclf evaluate`` (the inference engine) vs the extraction path vs
eager fp32, and the exported-model engines (ONNX Runtime, OpenVINO), in one run on the same photos.

Every row runs the same trained model directory over the same fixed, seeded, class-stratified subset of
``../shared/data/imagewoof/train`` (the files are read once before any timing, so no row pays for a cold disk), with
the torch threads of this process (all cores unless ``OMP_NUM_THREADS`` says otherwise):

* ``eager fp32``: what ``dogclf evaluate`` did before the engine: each image decoded and transformed in the main
  thread (``load_rgb`` + the torchvision eval transform), batches of 64 through the whole network in fp32 NCHW under
  ``torch.no_grad()``;
* ``extraction path``: :func:`dogclf.features.extract.iter_features` with its defaults (DataLoader worker
  processes decoding, inference mode, channels-last, bf16 autocast where the CPU has it, forward batches of 8) over
  the backbone, then the head on the features: the engine's ceiling on this machine;
* ``evaluate``: :func:`dogclf.evaluate` on a :func:`dogclf.load_model` classifier with its defaults (the fastest
  engine here: OpenVINO on x86 CPUs where installed; the precision this CPU runs natively; decoding threads
  overlapped with the forward pass), as ``dogclf evaluate`` runs it; then with ``--precision fp32``, with
  ``engine="torch"`` (as calibrated, and fp32: the reference for answers), and with ``engine="onnxruntime"``;
* ``dogclf predict`` and ``dogclf evaluate`` as commands (new processes: start-up, model load and, for evaluate, the
  data folder's decode-check pass included), on the same photos.

Each row reports images/s, its ratio to eager fp32 and to the extraction path, top-1 on the labelled photos, and
how many top-1 answers differ from the torch engine in fp32 (and the largest probability difference).
Also printed: the engine's decode-only and forward-only throughput on the same photos, and the machine's load.

    python bench/predict_speed.py --model MODEL_DIR [--images 1000] [--rows ...] [--repeats 1]

Check quickly with ``--images 100``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, machine  # bench/ is on sys.path when a script runs
from extract_speed import pick_subset

ALL_ROWS = (
    "eager",
    "extraction",
    "evaluate",
    "evaluate_fp32",
    "torch",
    "torch_fp32",
    "onnxruntime",
    "cli_predict",
    "cli_evaluate",
)


@dataclass
class Row:
    name: str
    seconds: float
    n: int
    probs: object | None  # (N, C) calibrated probabilities in image order, when the row has them
    top1: float | None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else float("nan")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def eager_fp32(model_dir: Path, paths: list[Path], labels: list[int]) -> Row:
    """The evaluate of before: main-thread decoding, batches of 64, fp32 NCHW, torch.no_grad()."""
    import torch

    from dogclf.classifier import load_model
    from dogclf.data.images import load_rgb
    from dogclf.data.transforms import eval_transform

    classifier = load_model(model_dir, precision="fp32", engine="torch")
    net = classifier.net.to(memory_format=torch.contiguous_format).eval()
    pre = classifier.preprocessing
    transform = eval_transform(pre)
    started = time.perf_counter()
    logits = []
    with torch.no_grad():
        for start in range(0, len(paths), 64):
            batch = torch.stack([transform(load_rgb(p, min_size=pre.resize_size)) for p in paths[start : start + 64]])
            logits.append(net(batch))
    seconds = time.perf_counter() - started
    probs = torch.softmax(torch.cat(logits) / classifier.temperature, dim=1)
    return Row("eager fp32 (evaluate before the engine)", seconds, len(paths), probs, _top1(probs, labels))


def extraction(model_dir: Path, paths: list[Path], labels: list[int]) -> Row:
    import torch

    from dogclf.classifier import load_model
    from dogclf.features.extract import ExtractOptions, extract_features, resolve_engine, resolve_precision

    classifier = load_model(model_dir, engine="torch")
    net = classifier.net.to(memory_format=torch.contiguous_format)
    options = ExtractOptions(device="cpu")
    started = time.perf_counter()
    features = extract_features(net.backbone, paths, classifier.preprocessing, options, progress=False)
    with torch.inference_mode():
        logits = net.head(features)
    seconds = time.perf_counter() - started
    probs = torch.softmax(logits / classifier.temperature, dim=1)
    note = f"{resolve_engine(options)} {resolve_precision(options)}, {options.workers()} decode process(es)"
    return Row("extraction path (features.extract defaults)", seconds, len(paths), probs, _top1(probs, labels), note)


def engine_row(name: str, model_dir: Path, paths: list[Path], labels: list[int], **load: object) -> Row:
    import torch

    from dogclf.classifier import load_model
    from dogclf.data.folder import Sample
    from dogclf.evaluation import evaluate
    from dogclf.inference.threads import ThreadBudget

    classifier = load_model(model_dir, **load)  # type: ignore[arg-type]
    budget = ThreadBudget.plan()
    classifier.engine.forward([classifier.engine.prepare(paths[0])])  # warm-up (an ONNX session is built here)
    samples = [Sample(path=p, label=y) for p, y in zip(paths, labels, strict=True)]
    started = time.perf_counter()
    report = evaluate(classifier, samples, budget=budget)
    seconds = time.perf_counter() - started
    probs = torch.cat(
        [classifier.scores(b.output).probabilities for b in classifier.engine.stream(paths, budget=budget)]
    )
    note = f"{classifier.engine.name} {classifier.precision_choice.describe()}; "
    note += classifier.engine.fit_budget(budget).describe()
    return Row(name, seconds, len(paths), probs, report.top1, note)


def breakdown(model_dir: Path, paths: list[Path]) -> str:
    """Decode-only (threads of the budget) and forward-only (pre-decoded) images/s of the torch engine."""
    from concurrent.futures import ThreadPoolExecutor

    from dogclf.classifier import load_model
    from dogclf.inference.threads import ThreadBudget, torch_threads

    classifier = load_model(model_dir)
    engine = classifier.engine
    budget = ThreadBudget.plan()
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, budget.decode_workers)) as pool:
        arrays = list(pool.map(engine.prepare, paths))
    decode = len(paths) / (time.perf_counter() - started)
    results = []
    for threads in sorted({budget.forward_threads, os.cpu_count() or 1}):
        with torch_threads(threads):
            engine.forward(arrays[:8])
            started = time.perf_counter()
            for start in range(0, len(arrays), 64):
                engine.forward(arrays[start : start + 64])
            results.append(f"{len(arrays) / (time.perf_counter() - started):.1f} img/s with {threads} torch thread(s)")
    return (
        f"decode + resize + crop only: {decode:.1f} img/s on {budget.decode_workers} thread(s); "
        f"forward only ({classifier.precision}, pre-decoded, one worker): {', '.join(results)}"
    )


def _tree(paths: list[Path], labels: list[int], root: Path) -> Path:
    """A data folder of symlinks: test/ holds the photos, train/ five of each class (evaluate wants a train/)."""
    for split, chosen in (("test", range(len(paths))), ("train", _first_per_class(labels, 5))):
        for i in chosen:
            target = root / split / paths[i].parent.name / paths[i].name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(paths[i])
    return root


def _first_per_class(labels: list[int], k: int) -> list[int]:
    seen: dict[int, int] = {}
    chosen = []
    for i, y in enumerate(labels):
        if seen.get(y, 0) < k:
            seen[y] = seen.get(y, 0) + 1
            chosen.append(i)
    return chosen


def command(name: str, argv: list[str], n: int) -> Row:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dogclf", *argv], capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    top1 = None
    if argv[0] == "evaluate":
        top1 = json.loads(done.stdout).get("top1")
    engine = next((line for line in done.stderr.splitlines() + done.stdout.splitlines() if "engine" in line), "")
    return Row(name, seconds, n, None, top1, f"new process: start-up and model load included; {engine.strip()[:90]}")


def _top1(probs: object, labels: list[int]) -> float:
    import torch

    return float((probs.argmax(dim=1) == torch.tensor(labels)).float().mean())  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a dogclf model directory")
    parser.add_argument("--images", type=int, default=1000, help="photos (stratified, seeded; default 1000)")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help=f"rows to run (default all: {','.join(ALL_ROWS)})")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per row; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ALL_ROWS)
    if unknown:
        sys.exit(f"unknown rows: {', '.join(sorted(unknown))}; choose from {', '.join(ALL_ROWS)}")

    paths, labels = pick_subset(args.images, args.seed)
    for path in paths:
        path.read_bytes()  # warm the page cache
    print(f"machine: {machine()}")
    print(f"load average at start: {load_average()}")
    print(f"model: {args.model}; {len(paths)} photos from imagewoof/train; best of {args.repeats}\n", flush=True)

    runners: dict[str, Callable[[], Row]] = {
        "eager": lambda: eager_fp32(args.model, paths, labels),
        "extraction": lambda: extraction(args.model, paths, labels),
        "evaluate": lambda: engine_row("dogclf evaluate (defaults)", args.model, paths, labels),
        "evaluate_fp32": lambda: engine_row(
            "dogclf evaluate --precision fp32", args.model, paths, labels, precision="fp32"
        ),
        "torch": lambda: engine_row("dogclf evaluate --engine torch", args.model, paths, labels, engine="torch"),
        "torch_fp32": lambda: engine_row(
            "dogclf evaluate --engine torch --precision fp32",
            args.model,
            paths,
            labels,
            engine="torch",
            precision="fp32",
        ),
        "onnxruntime": lambda: engine_row("engine onnxruntime", args.model, paths, labels, engine="onnxruntime"),
    }
    with tempfile.TemporaryDirectory(prefix="dogclf-predict-bench-") as tmp:
        tree = _tree(paths, labels, Path(tmp) / "data")
        listed = sorted((tree / "test").rglob("*.JPEG"))
        runners["cli_predict"] = lambda: command(
            "dogclf predict --json (command)",
            ["predict", "--model", str(args.model), "--json", *map(str, listed)],
            len(listed),
        )
        runners["cli_evaluate"] = lambda: command(
            "dogclf evaluate --json (command)",
            [
                "evaluate",
                "--model",
                str(args.model),
                "--data",
                str(tree),
                "--split",
                "test",
                "--json",
                "--plot",
                str(Path(tmp) / "confusion.png"),
            ],
            len(listed),
        )
        results: dict[str, Row] = {}
        for name in rows:
            best: Row | None = None
            for _ in range(args.repeats):
                row = runners[name]()
                best = row if best is None or row.seconds < best.seconds else best
            assert best is not None
            results[name] = best
            print(f"{best.name}: {best.rate:.1f} img/s ({best.seconds:.1f} s)  {best.note}", flush=True)
        if "evaluate" in rows:
            print("\n" + breakdown(args.model, paths), flush=True)

    reference = results.get("torch_fp32")
    eager = results.get("eager")
    extract = results.get("extraction")
    print("\n| row | images/s | vs eager fp32 | vs extraction | top-1 | top-1 changes vs torch fp32 | max prob diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in results.values():
        vs_eager = f"{row.rate / eager.rate:.2f}x" if eager else "-"
        vs_extract = f"{row.rate / extract.rate:.2f}x" if extract else "-"
        top1 = f"{row.top1:.2%}" if row.top1 is not None else "-"
        changes = diff = "-"
        if reference is not None and row.probs is not None and reference.probs is not None:
            ref = reference.probs
            changes = str(int((row.probs.argmax(dim=1) != ref.argmax(dim=1)).sum()))  # type: ignore[attr-defined]
            diff = f"{float((row.probs - ref).abs().max()):.1e}"  # type: ignore[operator]
        print(f"| {row.name} | {row.rate:.1f} | {vs_eager} | {vs_extract} | {top1} | {changes} | {diff} |")
    print(f"\nload average at end: {load_average()}")
    print(f"command: python {shlex.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
