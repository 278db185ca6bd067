"""What a ``features`` channel saves a SageMaker tuning job, measured with the local emulation.

Runs ``dogclf sagemaker tune --local`` twice on the same fixed stratified subset of ``../shared/data/imagewoof/train``
(a ``train/`` + ``valid/`` tree of symlinks), ``efficientnet_lite0`` with its ImageNet weights, the first seed's
search space, the same trials (same seed): once **without** a features channel (every trial extracts the backbone
features of every image, as each SageMaker trial on a fresh instance would) and once **with** one (a feature cache
written beforehand by a local ``dogclf train`` on the same photos, mounted as the ``features`` channel: trials read
the features instead). Each trial runs through the real SageMaker training toolkit on its own ``/opt/ml`` tree.
Prints each trial's wall time and the ratio of the mean trial times.

    python bench/sagemaker_tune_local.py [--images 400] [--trials 3]

Verify quickly with ``--images 60 --trials 2``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import IMAGEWOOF, REPO, machine  # bench/ is on sys.path when a script runs

NAMES = REPO / "examples" / "imagewoof_names.txt"
BACKBONE = "efficientnet_lite0"


def subset(root: Path, n_images: int, seed: int) -> Path:
    """``root/train/<class>/`` and ``root/valid/<class>/`` symlinks: 3/4 and 1/4 of ``n_images // classes``."""
    rng = random.Random(seed)
    for folder in sorted(d for d in IMAGEWOOF.iterdir() if d.is_dir()):
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        chosen = sorted(files[: max(4, n_images // 10)])
        cut = max(1, len(chosen) // 4)
        for split, part in (("valid", chosen[:cut]), ("train", chosen[cut:])):
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in part:
                (root / split / folder.name / path.name).symlink_to(path)
    return root


def dogclf(*args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dogclf", *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"dogclf {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def trial_seconds(out: Path) -> list[float]:
    with (out / "trials.csv").open(encoding="utf-8") as file:
        return [float(row["seconds"]) for row in csv.DictReader(file)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="photos in all (default 400)")
    parser.add_argument("--trials", type=int, default=3, help="trials per tuning run (default 3)")
    args = parser.parse_args()
    if not IMAGEWOOF.is_dir():
        sys.exit(f"This benchmark needs the photos in {IMAGEWOOF}.")
    print(machine())
    with tempfile.TemporaryDirectory(prefix="dogclf-bench-tune-") as tmp:
        root = Path(tmp)
        data = subset(root / "data", args.images, seed=0)
        env = {k: v for k, v in os.environ.items() if k != "DOGCLF_FEATURE_CACHE"} | {"HF_HUB_OFFLINE": "1"}
        common = ["--data", str(data), "--names", str(NAMES), "--backbone", BACKBONE]
        common += ["--space", "seed-resnet18", "--max-jobs", str(args.trials), "--local"]

        cache = root / "feature-cache"
        seconds = dogclf(
            "train",
            "--data",
            str(data),
            "--names",
            str(NAMES),
            "--backbone",
            BACKBONE,
            "--out",
            str(root / "first-model"),
            "--cache-dir",
            str(cache),
            "--epochs",
            "1",
            env=env,
        )
        print(f"dogclf train (extracts and caches the features once): {seconds:.1f} s")
        without_s = dogclf("sagemaker", "tune", *common, "--out", str(root / "without"), env=env)
        with_s = dogclf("sagemaker", "tune", *common, "--out", str(root / "with"), "--features", str(cache), env=env)
        without, with_features = trial_seconds(root / "without"), trial_seconds(root / "with")
        shutil.rmtree(root / "data")
    print(f"\n{args.images} photos, {args.trials} trials each, seed-resnet18 space, {BACKBONE}, via the toolkit")
    print("| trial | without features channel (s) | with features channel (s) |")
    print("|---:|---:|---:|")
    for i, (a, b) in enumerate(zip(without, with_features, strict=True), 1):
        print(f"| {i} | {a:.1f} | {b:.1f} |")
    mean_a, mean_b = sum(without) / len(without), sum(with_features) / len(with_features)
    print(f"| mean | {mean_a:.1f} | {mean_b:.1f} |")
    print(
        f"\nwhole tuning run: {without_s:.1f} s without, {with_s:.1f} s with; "
        f"mean trial {mean_a / mean_b:.2f}x faster with the features channel"
    )


if __name__ == "__main__":
    main()
