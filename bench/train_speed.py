"""Frozen-backbone training speed: ``dogclf.train`` (features extracted once, cached) vs a plain seed-style loop.

Both sides train a new linear head on the same frozen backbone (``efficientnet_lite0`` from the example plugin, with
its ImageNet weights), on the same fixed stratified subset of ``../shared/data/imagewoof/train``, for the same number
of epochs (5), with the same hyperparameters (Adam lr 1e-3, batch 32) and the same held-out part:

* the seed-style loop is plain PyTorch, as the seed write-ups did it: ``ImageFolder``-style loading, the backbone in
  eval mode with ``requires_grad=False``, a new ``nn.Linear`` head, and every epoch the training images go through
  the backbone in fp32, followed by a pass over the held-out part;
* dogclf runs ``dogclf.train`` with a fresh, empty feature-cache folder, so extracting the features once is part of
  its time (as are its check that every image decodes, validation every epoch, checkpoints and saving the model).

Each side is timed from building the model to the trained head. Top-1 is measured on the held-out part: the seed
loop's last epoch, and dogclf's saved model directory loaded back and evaluated through the images (not timed).
A second dogclf run on the now warm cache is timed too (what every later run of the same data costs).

    python bench/train_speed.py [--images 1500] [--holdout 0.2] [--epochs 5] [--device auto]

Verify quickly with ``--images 100 --epochs 1``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

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
    from dogclf.model import build_model
    from dogclf.training.config import resolve_device

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


def dogclf_side(
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
) -> tuple[float, float, float]:
    """``dogclf.train`` on the tree; returns ``(seconds, held-out top-1 of the saved model, last valid_top1)``."""
    import dogclf

    config = dogclf.TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, num_workers=workers
    )
    started = time.perf_counter()
    result = dogclf.train(
        tree,
        BACKBONE,
        out,
        config=config,
        weights="imagenet",
        progress=False,
        overwrite=True,
        cache_dir=cache_dir,
        precision=precision,
        log=lambda message: print(f"  {message}", flush=True),
    )
    seconds = time.perf_counter() - started
    classifier = dogclf.load_model(result.model_dir, device=device)
    report = dogclf.evaluate(classifier, result.splits.valid, batch_size=64, num_workers=workers)
    return seconds, report.top1, result.history[-1]["valid_top1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="subset size, stratified over the 10 classes")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of each class held out for top-1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (both sides)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading workers, both sides (default dogclf's)")
    parser.add_argument("--precision", default="auto", help="dogclf's extraction precision (default auto)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data tree, models and cache here")
    args = parser.parse_args()

    import dogclf

    spec = dogclf.get_backbone(BACKBONE)  # fails early, with the fix, if the example plugin is not installed
    workers = args.workers if args.workers is not None else dogclf.TrainConfig().workers()
    classes, train, held = pick_subset(args.images, args.holdout, args.seed)
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

        print("seed-style loop (frozen backbone, images through it every epoch, fp32):", flush=True)
        seed_seconds, seed_top1 = seed_style(
            tree,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            workers=workers,
            seed=args.seed,
        )
        common = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "device": args.device,
            "workers": workers,
            "seed": args.seed,
            "precision": args.precision,
        }
        print("dogclf.train, empty feature cache:", flush=True)
        cold_seconds, cold_top1, cold_valid = dogclf_side(tree, work / "model-cold", cache, **common)
        print("dogclf.train again, warm feature cache:", flush=True)
        warm_seconds, warm_top1, _ = dogclf_side(tree, work / "model-warm", cache, **common)

    ratio = seed_seconds / cold_seconds
    print()
    print(f"seed-style loop        : {seed_seconds:8.1f} s  held-out top-1 {seed_top1:.2%}")
    print(f"dogclf, cold cache     : {cold_seconds:8.1f} s  held-out top-1 {cold_top1:.2%} ({ratio:.1f}x faster)")
    print(
        f"dogclf, warm cache     : {warm_seconds:8.1f} s  held-out top-1 {warm_top1:.2%} "
        f"({seed_seconds / warm_seconds:.1f}x faster)"
    )
    print(
        f"top-1 difference (dogclf cold - seed): {100 * (cold_top1 - seed_top1):+.2f} points "
        f"(dogclf's own last-epoch valid_top1 on features: {cold_valid:.2%})"
    )
    print()
    print("| run | wall time (s) | speed-up | held-out top-1 |")
    print("|---|---:|---:|---:|")
    print(f"| seed-style PyTorch loop (fp32, images every epoch) | {seed_seconds:.1f} | 1.0x | {seed_top1:.2%} |")
    print(f"| `dogclf.train`, empty cache | {cold_seconds:.1f} | {ratio:.1f}x | {cold_top1:.2%} |")
    print(f"| `dogclf.train`, warm cache | {warm_seconds:.1f} | {seed_seconds / warm_seconds:.1f}x | {warm_top1:.2%} |")
    print()
    print(
        f"{len(train)} train / {len(held)} held-out images, {args.epochs} epochs, {BACKBONE}, batch "
        f"{args.batch_size}, {workers} workers."
    )
    print(f"Command: python {shlex.join(['bench/train_speed.py', *sys.argv[1:]])}")
    print(f"Machine: {machine(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
