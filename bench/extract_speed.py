"""Feature-extraction speed: ``dogclf.features.extract`` vs a plain eager fp32 NCHW pass, and the top-1 difference.

Every variant runs the same frozen backbone (``efficientnet_lite0`` from the example plugin, with its ImageNet
weights) over the same fixed, seeded, class-stratified subset of ``../shared/data/imagewoof/train``, with the same
DataLoader decoding (Pillow, eval transform, the same worker count and batch size) and the same torch thread count:

* ``baseline``: eager fp32, NCHW, the model in eval mode under ``torch.no_grad()``: what a plain loop does;
* ``dogclf``: :func:`dogclf.features.extract.extract_features` with its default options (inference mode,
  channels-last, bfloat16 autocast where the CPU has native bfloat16, small forward batches on a CPU);
* intermediate steps, to show where the gain comes from: ``baseline_small`` (the baseline, but each loader batch
  goes through the model in dogclf's small forward batches), ``channels_last`` (dogclf, fp32), ``bf16_nchw``
  (dogclf, bf16, NCHW), ``dogclf_full_batch`` (dogclf defaults, but the whole loader batch in one forward pass);
  and, only when named in ``--variants``, ``compile`` (dogclf defaults plus ``torch.compile``; its warm-up, compile
  included, is reported separately).

The files are read once before any timing (so no variant pays for a cold disk) and each variant is warmed up on
one batch (not timed); then the whole subset is timed, DataLoader start-up
included, ``--repeats`` times, and the fastest pass counts.

Top-1: a seeded scikit-learn logistic regression (standardised features) is scored by stratified 5-fold
cross-validation on each variant's features, so every image is predicted once by a model that did not see it.
The difference between the baseline's fp32 features and dogclf's is printed in points, with the cosine similarity
of the features.

    python bench/extract_speed.py [--images 1000] [--batch-size 64] [--workers N] [--repeats 1]
        [--variants baseline,baseline_small,channels_last,bf16_nchw,dogclf_full_batch,dogclf,compile] [--device auto]

Verify quickly with ``--images 200``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import IMAGEWOOF, machine  # bench/ is on sys.path when a script runs

BACKBONE = "efficientnet_lite0"
ALL_VARIANTS = ("baseline", "baseline_small", "channels_last", "bf16_nchw", "dogclf_full_batch", "dogclf", "compile")
DEFAULT_VARIANTS = "baseline,baseline_small,channels_last,bf16_nchw,dogclf_full_batch,dogclf"


def pick_subset(n_images: int, seed: int) -> tuple[list[Path], list[int]]:
    """A fixed stratified subset: ``n_images // classes`` images per class (at least 5), drawn with ``seed``."""
    from dogclf.data.images import is_image_file

    classes = sorted(d.name for d in IMAGEWOOF.iterdir() if d.is_dir()) if IMAGEWOOF.is_dir() else []
    if not classes:
        sys.exit(f"No class folders under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    per_class = max(5, n_images // len(classes))
    rng = random.Random(seed)
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (IMAGEWOOF / name).iterdir() if is_image_file(p))
        for path in rng.sample(files, min(per_class, len(files))):
            paths.append(path)
            labels.append(label)
    return paths, labels


def baseline_features(backbone, paths, preprocessing, batch_size: int, workers: int, forward_batch: int):
    """Eager fp32 NCHW: the same DataLoader decoding, the model in eval mode, a plain ``torch.no_grad()`` forward.

    Each loader batch goes through the model in pieces of ``forward_batch`` images (the whole batch in a plain loop).
    """
    import torch

    from dogclf.features.extract import _IndexedImages

    loader = torch.utils.data.DataLoader(
        _IndexedImages(paths, preprocessing), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    backbone.eval()
    out = []
    with torch.no_grad():
        for images, _, _ in loader:
            out += [backbone(part) for part in images.split(forward_batch)]
    return torch.cat(out)


def timed(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Runs ``run`` ``repeats`` times; returns the fastest time and the last result."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def cv_top1(features, labels: list[int], seed: int) -> float:
    """Top-1 of a seeded logistic regression by stratified 5-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features.double().numpy()
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    predicted = cross_val_predict(classifier, x, labels, cv=folds)
    return float((predicted == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", "--limit", type=int, default=1000, help="subset size (stratified), default 1000")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers; default as dogclf picks")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per variant; the fastest counts")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {','.join(ALL_VARIANTS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown or "baseline" not in variants:
        parser.error(f"--variants must include baseline and come from {', '.join(ALL_VARIANTS)}; got {unknown}")

    import torch

    import dogclf
    from dogclf.backbones.weights import build_backbone
    from dogclf.data.images import find_unreadable
    from dogclf.features.extract import ExtractOptions, extract_features, resolve_precision
    from dogclf.hardware import resolve_device

    device = resolve_device(args.device)
    spec = dogclf.get_backbone(BACKBONE)
    backbone = build_backbone(spec, "imagenet", progress=False)
    paths, labels = pick_subset(args.images, args.seed)
    broken = {p for p, _ in find_unreadable(paths)}
    labels = [label for p, label in zip(paths, labels, strict=True) if p not in broken]
    paths = [p for p in paths if p not in broken]
    for path in paths:  # every variant reads the files from the page cache, not the first one from disk
        path.read_bytes()
    defaults = ExtractOptions(device=args.device, num_workers=args.workers, batch_size=args.batch_size)
    workers = defaults.workers()
    chunk = defaults.forward_size(device)
    pre = spec.preprocessing
    warm = paths[: args.batch_size]

    def dogclf_run(**changes: object) -> Callable[[list[Path]], object]:
        options = ExtractOptions(
            **{"device": args.device, "num_workers": workers, "batch_size": args.batch_size, **changes}
        )
        return lambda items: extract_features(backbone, items, pre, options, progress=False)

    runs: dict[str, Callable[[list[Path]], object]] = {
        "baseline": lambda items: baseline_features(
            backbone.to(device), items, pre, args.batch_size, workers, args.batch_size
        ),
        "baseline_small": lambda items: baseline_features(
            backbone.to(device), items, pre, args.batch_size, workers, chunk
        ),
        "channels_last": dogclf_run(precision="fp32", channels_last=True),
        "bf16_nchw": dogclf_run(precision="bf16", channels_last=False),
        "dogclf_full_batch": dogclf_run(forward_batch=args.batch_size),
        "dogclf": dogclf_run(),
        "compile": dogclf_run(compile=True),
    }
    labels_of = {
        "baseline": f"eager fp32 NCHW, torch.no_grad, forward batch {args.batch_size}",
        "baseline_small": f"eager fp32 NCHW, torch.no_grad, forward batch {chunk}",
        "channels_last": f"dogclf, fp32, channels-last, forward batch {chunk}",
        "bf16_nchw": f"dogclf, bf16 autocast, NCHW, forward batch {chunk}",
        "dogclf_full_batch": f"dogclf defaults but forward batch {args.batch_size}",
        "dogclf": f"**dogclf defaults** ({resolve_precision(defaults)}, channels-last, forward batch {chunk})",
        "compile": "dogclf defaults + torch.compile",
    }
    print(f"machine: {machine(device)}", flush=True)
    print(
        f"{len(paths)} images, {len(set(labels))} classes, loader batch {args.batch_size}, {workers} workers",
        flush=True,
    )
    rates: dict[str, float] = {}
    features: dict[str, torch.Tensor] = {}
    for name in variants:
        run = runs[name]
        started = time.perf_counter()
        run(warm)  # warm-up: allocator, oneDNN kernels, compile (not timed)
        if name == "compile":
            print(f"compile: warm-up of {len(warm)} images, compile included: {time.perf_counter() - started:.1f} s")
        seconds, result = timed(lambda run=run: run(paths), args.repeats)
        rates[name] = len(paths) / seconds
        features[name] = result.to("cpu", torch.float32)
        print(f"{name}: {rates[name]:.1f} img/s ({seconds:.1f} s)", flush=True)

    reference = features["baseline"]
    top1 = {name: cv_top1(f, labels, args.seed) for name, f in features.items()}
    command = "python bench/extract_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print()
    print(f"Command: `{command.strip()}`")
    print(f"Machine: {machine(device)}.")
    print(f"{len(paths)} imagewoof images, DataLoader batch {args.batch_size}, {workers} decoding workers.")
    print()
    print("| variant | images/s | vs baseline | top-1 (5-fold logreg) | top-1 diff (points) | min cosine vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        cosine = torch.nn.functional.cosine_similarity(features[name], reference, dim=1).min().item()
        diff = 100 * (top1[name] - top1["baseline"])
        print(
            f"| {labels_of[name]} | {rates[name]:.1f} | {rates[name] / rates['baseline']:.2f}x | "
            f"{100 * top1[name]:.1f}% | {diff:+.1f} | {cosine:.4f} |"
        )
    if "dogclf" in rates:
        ratio = rates["dogclf"] / rates["baseline"]
        diff = 100 * (top1["dogclf"] - top1["baseline"])
        verdict = "meets" if ratio >= 2.5 and abs(diff) <= 0.5 + 1e-9 else "misses"
        print(f"\ndogclf vs baseline: {ratio:.2f}x images/s, top-1 {diff:+.1f} points ({verdict} >= 2.5x, <= 0.5 pt)")
        if "baseline_small" in rates:
            print(
                f"dogclf vs baseline_small (fp32 NCHW at dogclf's forward batch): "
                f"{rates['dogclf'] / rates['baseline_small']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
