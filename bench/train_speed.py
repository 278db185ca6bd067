"""Frozen-backbone training speed on a small job: ``dogclf train`` (the CLI, from an empty feature cache) against its
own steady-state extraction time and against a plain seed-style loop.

The target (issue 11): ``dogclf train`` on 400 photos, empty cache, 5 epochs, takes at most its steady-state extraction
time plus 3 s, and is at least 10x faster than the seed-style loop on the same photos. All three are measured in one
run, on the same fixed stratified subset of ``../shared/data/imagewoof/train`` (``--images`` photos, ``--holdout`` of
each class in ``valid/``), with ``efficientnet_lite0`` from the example plugin (ImageNet weights, frozen), a new
linear head, Adam lr 1e-3, batch 32:

* **steady-state extraction**: in this process, after a warm-up pass, one pass of ``dogclf.features.extract`` over the
  same photos with dogclf's defaults (the same workers, threads and precision as ``dogclf train``); the rate is taken
  from the first yielded batch to the last, so it leaves out loader start-up and first-batch latency. Its time for
  all the photos is what ``dogclf train`` cannot avoid; everything above it is fixed cost.
* **``dogclf train``**: the real command in a fresh Python process (``python -m dogclf train ... --cache-dir EMPTY``),
  timed from launch to exit, so interpreter start, imports, model build, weights digest, loader start-up, the
  extraction, 5 epochs with checkpoints, calibration and saving are all in it. Each output line is time-stamped, which
  shows where the seconds go. A second run on the now warm cache is timed too.
* **seed-style loop**: plain PyTorch as the seed write-ups did it (``ImageFolder``-style loading, the backbone in eval
  mode with ``requires_grad=False``, every epoch the training images go through the backbone in fp32, then a pass
  over the held-out part), timed from building the model to the last epoch. It starts from the same head
  initialisation and visits the images in the same order as ``dogclf train`` with the same seed, so top-1 compares
  the methods and not two random draws.

Top-1 is on the held-out part: the seed loop's last epoch, and dogclf's saved model loaded back and evaluated through
the images (not timed).

    python bench/train_speed.py [--images 400] [--holdout 0.2] [--epochs 5] [--device auto]

Verify quickly with ``--images 40 --epochs 1``.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import IMAGEWOOF, machine  # bench/ is on sys.path when a script runs

BACKBONE = "efficientnet_lite0"


def pick_subset(
    n_images: int, holdout: float, seed: int
) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """A fixed stratified subset: ``n_images // classes`` per class, ``holdout`` of each class held out."""
    classes = sorted(d.name for d in IMAGEWOOF.iterdir() if d.is_dir())
    if not classes:
        sys.exit(f"No class folders under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    per_class = max(2, n_images // len(classes))
    rng = random.Random(seed)
    train: list[tuple[Path, int]] = []
    held: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (IMAGEWOOF / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(files)
        chosen = files[:per_class]
        n_held = max(1, round(len(chosen) * holdout))
        held += [(p, label) for p in chosen[:n_held]]
        train += [(p, label) for p in chosen[n_held:]]
    return classes, train, held


def make_tree(root: Path, classes: list[str], train: list[tuple[Path, int]], held: list[tuple[Path, int]]) -> Path:
    """``root/train/<class>/`` and ``root/valid/<class>/`` of symlinks to the chosen photos."""
    for split, samples in (("train", train), ("valid", held)):
        for path, label in samples:
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / path.name).symlink_to(path)
    return root


def seed_style(
    tree: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: str,
    workers: int,
    seed: int,
) -> tuple[float, float]:
    """The plain loop; returns ``(seconds, held-out top-1 after the last epoch)``.

    To compare the methods and not two random draws, the loop starts from the same head initialisation and visits
    the training images in the same order each epoch as ``dogclf.train`` with the same seed (same seeding before
    ``build_model``, same per-epoch shuffle); everything else is a plain loop.
    """
    import random

    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from dogclf._compat import import_torchvision
    from dogclf.backbones.registry import get_backbone
    from dogclf.data.dataset import EpochShuffleSampler
    from dogclf.data.folder import load_splits
    from dogclf.hardware import resolve_device
    from dogclf.model import build_model

    splits = load_splits(tree, check_images=False)  # dogclf's sample order, so the shuffles match; not timed
    train = [(s.path, s.label) for s in splits.train]
    held = [(s.path, s.label) for s in splits.valid]
    n_classes = len(splits.classes)

    transforms = import_torchvision().transforms

    class Photos(Dataset):  # what torchvision's ImageFolder does, over our file list
        def __init__(self, samples: list[tuple[Path, int]], transform: object) -> None:
            self.samples = samples
            self.transform = transform

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            path, label = self.samples[index]
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label  # type: ignore[operator]

    started = time.perf_counter()
    spec = get_backbone(BACKBONE)
    pre = spec.preprocessing
    transform = transforms.Compose(
        [
            transforms.Resize(pre.resize_size),
            transforms.CenterCrop(pre.input_size),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    run_on = resolve_device(device)
    torch.manual_seed(seed)  # as dogclf.train does before building the model: the same initial head
    random.seed(seed)
    model = build_model(spec, n_classes, weights="imagenet", freeze=True)  # frozen backbone + new nn.Linear head
    backbone = model.backbone.to(run_on).eval()
    head = model.head.to(run_on)
    order = EpochShuffleSampler(len(train), seed=seed)  # dogclf's per-epoch shuffle

    class EpochOrder(torch.utils.data.Sampler[int]):
        def __iter__(self):
            return (index for index, _seed in order)

        def __len__(self) -> int:
            return len(order)

    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    common = {"batch_size": batch_size, "num_workers": workers, "pin_memory": run_on.type == "cuda"}
    train_loader = DataLoader(Photos(train, transform), sampler=EpochOrder(), **common)
    held_loader = DataLoader(Photos(held, transform), shuffle=False, **common)
    top1 = 0.0
    for epoch in range(1, epochs + 1):
        order.set_epoch(epoch)
        head.train()
        total, seen = 0.0, 0
        for images, labels in train_loader:
            images, labels = images.to(run_on), labels.to(run_on)
            loss = loss_fn(head(backbone(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(labels)
            seen += len(labels)
        head.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in held_loader:
                logits = head(backbone(images.to(run_on)))
                correct += int((logits.argmax(1).cpu() == labels).sum())
        top1 = correct / len(held)
        print(f"  seed-style epoch {epoch}: train_loss={total / seen:.4f} held_top1={top1:.4f}", flush=True)
    if run_on.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, top1


@dataclass(frozen=True)
class Steady:
    """dogclf's steady-state extraction: images/s (wall, from the first batch on) and CPU seconds per image."""

    rate: float
    timed: int
    cpu_per_image: float


def _cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its children that have exited (loader workers, commands)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def steady_state(tree: Path, *, device: str, workers: int, precision: str) -> Steady:
    """dogclf's extraction over the tree's photos once warm.

    A warm-up pass comes first (oneDNN kernels, page cache); then the wall rate of one pass is taken from the first
    yielded batch to the end, leaving out loader start-up and first-batch latency, and its CPU time (workers
    included) per image. Fewer than 5 loader batches of photos are repeated to make 5.
    """
    import torch

    import dogclf
    from dogclf.data.folder import load_splits
    from dogclf.features.extract import ExtractOptions, iter_features
    from dogclf.model import build_model

    splits = load_splits(tree, check_images=False)
    paths = [s.path for s in splits.train + splits.valid]
    spec = dogclf.get_backbone(BACKBONE)
    backbone = build_model(spec, len(splits.classes), weights="imagenet").backbone
    options = ExtractOptions(num_workers=workers, precision=precision, device=device)
    for _ in iter_features(backbone, paths[: 2 * options.batch_size], spec.preprocessing, options):
        pass
    paths = (paths * (1 + 5 * options.batch_size // len(paths)))[: max(len(paths), 5 * options.batch_size)]
    first_at: float | None = None
    first_size = 0
    cpu = _cpu_seconds()
    for positions, _features in iter_features(backbone, paths, spec.preprocessing, options):
        if first_at is None:
            first_at, first_size = time.perf_counter(), len(positions)
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.synchronize()
    assert first_at is not None
    timed = len(paths) - first_size
    rate = timed / (time.perf_counter() - first_at)
    return Steady(rate=rate, timed=timed, cpu_per_image=(_cpu_seconds() - cpu) / len(paths))


def dogclf_cli(
    tree: Path,
    out: Path,
    cache_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: str,
    workers: int,
    seed: int,
    precision: str,
    environ: dict[str, str] | None = None,
) -> tuple[float, float, list[tuple[float, str]]]:
    """``python -m dogclf train ...`` in a fresh process (``environ`` added to its environment).

    Returns:
        ``(seconds from launch to exit, CPU seconds of it and its loader workers, time-stamped output lines)``.
    """
    argv = [sys.executable, "-m", "dogclf", "train", "--data", str(tree), "--backbone", BACKBONE, "--out", str(out)]
    argv += ["--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", f"{lr:g}", "--seed", str(seed)]
    argv += ["--device", device, "--workers", str(workers), "--precision", precision]
    argv += ["--cache-dir", str(cache_dir), "--no-progress", "--overwrite"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(environ or {})}
    lines: list[tuple[float, str]] = []
    cpu = _cpu_seconds()
    started = time.perf_counter()
    # cwd: not the repository, or `python -m` would import the checkout there rather than the installed dogclf.
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "env": env}
    with subprocess.Popen(argv, cwd=out.parent, **options) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))
    seconds = time.perf_counter() - started
    if process.returncode:
        sys.exit("dogclf train failed:\n" + "\n".join(text for _, text in lines))
    return seconds, _cpu_seconds() - cpu, lines


def held_out_top1(model_dir: Path, tree: Path, *, device: str, workers: int) -> float:
    """Top-1 of a saved model on the tree's held-out part, through the images."""
    import dogclf
    from dogclf.data.folder import load_splits

    classifier = dogclf.load_model(model_dir, device=device)
    report = dogclf.evaluate(
        classifier, load_splits(tree, check_images=False).valid, batch_size=64, num_workers=workers
    )
    return report.top1


def _print_timeline(lines: list[tuple[float, str]]) -> None:
    for at, text in lines:
        if not text.startswith("epoch="):
            print(f"  {at:6.2f} s  {text[:110]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="subset size, stratified over the 10 classes")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of each class held out (valid/)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (every side)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading workers, every side (default dogclf's)")
    parser.add_argument("--precision", default="auto", help="dogclf's extraction precision (default auto)")
    parser.add_argument("--budget", type=float, default=3.0, help="allowed fixed seconds over steady-state extraction")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data tree, models and cache here")
    parser.add_argument("--no-seed-loop", action="store_true", help="skip the seed-style loop (fixed costs only)")
    args = parser.parse_args()

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    import dogclf
    from dogclf.features.extract import ExtractOptions
    from dogclf.features.pipeline import effective_precision

    spec = dogclf.get_backbone(BACKBONE)  # fails early, with the fix, if the example plugin is not installed
    workers = args.workers if args.workers is not None else dogclf.TrainConfig().workers()
    precision = effective_precision(ExtractOptions(num_workers=workers, precision=args.precision, device=args.device))
    classes, train, held = pick_subset(args.images, args.holdout, args.seed)
    n_images = len(train) + len(held)
    print(
        f"{len(train)} training and {len(held)} held-out images of {len(classes)} classes from {IMAGEWOOF}; "
        f"{spec.name}, {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr:g}, {workers} workers",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="dogclf-train-speed-") as scratch:
        work = args.workdir or Path(scratch)
        tree = work / f"data-{args.images}-{args.holdout:g}-{args.seed}"
        if not tree.exists():
            make_tree(tree, classes, train, held)
        cache = work / f"cache-{time.time_ns()}"  # fresh and empty: extraction is part of the timed run
        common = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device}
        common |= {"workers": workers, "seed": args.seed}

        seed_seconds, seed_top1 = float("nan"), float("nan")
        if not args.no_seed_loop:
            print("seed-style loop (frozen backbone, images through it every epoch, fp32):", flush=True)
            seed_seconds, seed_top1 = seed_style(tree, **common)
        print("steady-state extraction (dogclf.features.extract, warm):", flush=True)
        floor = steady_state(tree, device=args.device, workers=workers, precision=args.precision)
        steady = n_images / floor.rate
        print(
            f"  {floor.rate:.1f} img/s over {floor.timed} images: {steady:.2f} s for {n_images} images; "
            f"{1000 * floor.cpu_per_image:.1f} ms CPU per image",
            flush=True,
        )
        print("dogclf train, empty feature cache and empty OpenVINO cache (a first run ever):", flush=True)
        first_env = {"DOGCLF_OPENVINO_CACHE": str(work / f"ov-{time.time_ns()}")}
        first, first_cpu, lines = dogclf_cli(
            tree,
            work / "model-first",
            work / f"cache-first-{time.time_ns()}",
            precision=args.precision,
            environ=first_env,
            **common,
        )
        _print_timeline(lines)
        print("dogclf train, empty feature cache (a fresh process; the backbone's OpenVINO conversion cached):")
        cold, cold_cpu, lines = dogclf_cli(tree, work / "model-cold", cache, precision=args.precision, **common)
        _print_timeline(lines)
        print("dogclf train again, warm feature cache:", flush=True)
        warm, warm_cpu, lines = dogclf_cli(tree, work / "model-warm", cache, precision=args.precision, **common)
        _print_timeline(lines)
        cold_top1 = held_out_top1(work / "model-cold", tree, device=args.device, workers=workers)
        warm_top1 = held_out_top1(work / "model-warm", tree, device=args.device, workers=workers)

    fixed = cold - steady
    fixed_cpu = cold_cpu - n_images * floor.cpu_per_image
    speedup = seed_seconds / cold
    print()
    print(f"steady-state extraction: {floor.rate:.1f} img/s, {steady:.2f} s for {n_images} images ({precision})")
    print(
        f"dogclf train, empty cache: {cold:.2f} s = steady-state extraction + {fixed:.2f} s fixed "
        f"(target <= +{args.budget:g} s: {'met' if fixed <= args.budget else 'NOT met'})"
    )
    print(
        f"  CPU: {cold_cpu:.2f} s = {n_images} x {1000 * floor.cpu_per_image:.1f} ms of steady-state extraction "
        f"+ {fixed_cpu:.2f} s fixed (warm cache: {warm_cpu:.2f} s)"
    )
    print(
        f"speed-up over the seed-style loop: {speedup:.1f}x (target >= 10x: {'met' if speedup >= 10 else 'NOT met'}); "
        f"top-1 dogclf {cold_top1:.2%} vs seed loop {seed_top1:.2%} ({100 * (cold_top1 - seed_top1):+.2f} points)"
    )
    print()
    print("| run | wall time (s) | CPU time (s) | vs seed loop | held-out top-1 |")
    print("|---|---:|---:|---:|---:|")
    print(f"| seed-style PyTorch loop (fp32, images every epoch) | {seed_seconds:.1f} | | 1.0x | {seed_top1:.2%} |")
    print(
        f"| steady-state extraction of the {n_images} photos (the floor) | {steady:.2f} | "
        f"{n_images * floor.cpu_per_image:.2f} | | |"
    )
    print(
        f"| `dogclf train`, empty caches, OpenVINO conversion included (first run ever) | {first:.2f} | "
        f"{first_cpu:.2f} | {seed_seconds / first:.1f}x | |"
    )
    print(
        f"| `dogclf train`, empty feature cache (fresh process) | {cold:.2f} | {cold_cpu:.2f} | {speedup:.1f}x | "
        f"{cold_top1:.2%} |"
    )
    print(
        f"| `dogclf train`, warm cache (fresh process) | {warm:.2f} | {warm_cpu:.2f} | {seed_seconds / warm:.1f}x | "
        f"{warm_top1:.2%} |"
    )
    print()
    print(
        f"{len(train)} train / {len(held)} held-out images, {args.epochs} epochs, {BACKBONE}, batch "
        f"{args.batch_size}, {workers} workers, precision {precision}."
    )
    print(f"Command: python {shlex.join(['bench/train_speed.py', *sys.argv[1:]])}")
    print(f"Machine: {machine(args.device)}; load average before the run: {load_before}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
