"""What tuning costs: a 20-trial ``dogclf tune`` vs one ``dogclf train``; with ``--full``, what tuning buys.

**Speed (default).** Both commands run as subprocesses on the same fixed stratified subset of
``../shared/data/imagewoof/train`` (a ``train/`` + ``valid/`` tree of symlinks), with ``efficientnet_lite0`` and its
ImageNet weights, each with its own fresh, **empty** feature-cache folder, so each pays the feature extraction once
(the image files are read once beforehand so neither run gets a warmer page cache). ``dogclf train`` uses its
defaults (5 epochs, batch 32, Adam lr 1e-3); ``dogclf tune`` runs 20 trials over the default search space. The
target: the tune costs at most 1.5x the train.

**Quality (``--full``).** ``dogclf tune --train-best`` on the whole of ``imagewoof/train`` with
``--valid-fraction 0.2``, then, as the baseline, scikit-learn's ``LogisticRegression`` (lbfgs, ``max_iter=1000``)
fitted on the same cached features of the same 80% and scored on the same 20%: once with the default ``C=1`` and
once with ``C`` picked on that 20% from a small grid (the same selection advantage the tune has). The target: the
tuned model's valid top-1 is at least the baseline's.

    python bench/tune_speed.py [--images 1500] [--trials 20] [--device auto]
    python bench/tune_speed.py --full [--trials 20] [--device auto]

Verify quickly with ``--images 60 --trials 3`` and ``--full --images 80 --trials 3``. Needs the ``bench`` extra
(scikit-learn) for ``--full``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import IMAGEWOOF, REPO, machine  # bench/ is on sys.path when a script runs

NAMES = REPO / "examples" / "imagewoof_names.txt"
BACKBONE = "efficientnet_lite0"
C_GRID = (0.01, 0.1, 1.0, 10.0)


def list_images(n_images: int | None, seed: int) -> dict[str, list[Path]]:
    """Class folder -> a fixed random choice of ``n_images // classes`` photos (all photos when ``None``)."""
    classes = sorted(d.name for d in IMAGEWOOF.iterdir() if d.is_dir())
    if not classes:
        sys.exit(f"No class folders under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    rng = random.Random(seed)
    chosen: dict[str, list[Path]] = {}
    for name in classes:
        files = sorted(p for p in (IMAGEWOOF / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if n_images is not None:
            rng.shuffle(files)
            files = sorted(files[: max(5, n_images // len(classes))])
        chosen[name] = files
    return chosen


def link_tree(root: Path, split_files: dict[str, dict[str, list[Path]]]) -> Path:
    """``root/<split>/<class>/`` of symlinks (``split`` ``""`` for a flat class-per-folder tree)."""
    for split, by_class in split_files.items():
        for name, files in by_class.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                (folder / path.name).symlink_to(path)
    return root


def split_holdout(chosen: dict[str, list[Path]], holdout: float, seed: int) -> dict[str, dict[str, list[Path]]]:
    rng = random.Random(seed)
    train: dict[str, list[Path]] = {}
    valid: dict[str, list[Path]] = {}
    for name, files in chosen.items():
        files = list(files)
        rng.shuffle(files)
        n_valid = max(1, round(len(files) * holdout))
        valid[name], train[name] = sorted(files[:n_valid]), sorted(files[n_valid:])
    return {"train": train, "valid": valid}


def read_all(chosen: dict[str, list[Path]]) -> None:
    """Reads every photo once, so the page cache is equally warm for whichever command runs first."""
    for files in chosen.values():
        for path in files:
            path.read_bytes()


def run(command: list[str], env: dict[str, str]) -> float:
    """Runs a ``dogclf`` command, streaming its output; returns its wall time."""
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dogclf", *command[1:]], env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{command[0]} {command[1]} failed with exit code {done.returncode}")
    return seconds


def speed(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    chosen = list_images(args.images, args.seed)
    tree = link_tree(work / "data", split_holdout(chosen, 0.2, args.seed))
    n = sum(len(f) for f in chosen.values())
    read_all(chosen)
    common = ["--data", str(tree), "--backbone", BACKBONE, "--device", args.device, "--seed", str(args.seed)]
    train_cmd = ["dogclf", "train", *common, "--out", str(work / "model"), "--cache-dir", str(work / "cache-train")]
    tune_cmd = [
        "dogclf",
        "tune",
        *common,
        "--trials",
        str(args.trials),
        "--out",
        str(work / "tune"),
        "--cache-dir",
        str(work / "cache-tune"),
    ]
    train_seconds = run(train_cmd, env)
    tune_seconds = run(tune_cmd, env)
    model = json.loads((work / "model" / "config.json").read_text(encoding="utf-8"))
    train_top1 = model["metrics"]["final"]["valid_top1"]
    best = json.loads((work / "tune" / "best_params.json").read_text(encoding="utf-8"))
    ratio = tune_seconds / train_seconds
    print()
    print("| run | wall time (s) | vs train | valid top-1 |")
    print("|---|---:|---:|---:|")
    print(f"| `dogclf train` (defaults), empty cache | {train_seconds:.1f} | 1.00x | {train_top1:.2%} |")
    print(
        f"| `dogclf tune --trials {args.trials}`, empty cache | {tune_seconds:.1f} | {ratio:.2f}x | "
        f"{best['value']:.2%} (best trial) |"
    )
    print()
    print(f"Target: tune <= 1.5x train: {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x).")
    print(f"Best: {json.dumps(best['params'])}; trials {json.dumps(best['trials'])}")
    print(f"{n} images ({', '.join(f'{len(v)}' for v in chosen.values())} per class), 20% held out as valid/.")


def logistic_baseline(data: Path, valid_fraction: float, seed: int, cache: Path, device: str) -> dict[str, float]:
    """LogisticRegression on the tune's cached features: train -> valid top-1, default C and the best C of a grid."""
    import numpy as np
    from _features import lite0_features
    from sklearn.linear_model import LogisticRegression

    from dogclf.data.folder import load_splits

    splits = load_splits(data, valid_fraction=valid_fraction, seed=seed)
    features = lite0_features(splits, cache, device)
    x_train, y_train = features["train"].features.numpy(), features["train"].labels.numpy()
    x_valid, y_valid = features["valid"].features.numpy(), features["valid"].labels.numpy()
    scores: dict[str, float] = {}
    for c in C_GRID:
        started = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
        model.fit(x_train, y_train)
        scores[f"C={c:g}"] = float(np.mean(model.predict(x_valid) == y_valid))
        seconds = time.perf_counter() - started
        print(f"  LogisticRegression C={c:g}: valid top-1 {scores[f'C={c:g}']:.2%} ({seconds:.1f} s)", flush=True)
    return scores


def full(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    if args.images is None:
        data = IMAGEWOOF
        n = sum(len(f) for f in list_images(None, args.seed).values())
    else:  # a small flat copy of the same layout, to check this script quickly
        chosen = list_images(args.images, args.seed)
        data = link_tree(work / "data", {"": chosen})
        n = sum(len(f) for f in chosen.values())
    cache = work / "cache"
    tune_cmd = [
        "dogclf",
        "tune",
        "--data",
        str(data),
        "--names",
        str(NAMES),
        "--valid-fraction",
        "0.2",
        "--backbone",
        BACKBONE,
        "--trials",
        str(args.trials),
        "--train-best",
        "--out",
        str(work / "tune"),
        "--cache-dir",
        str(cache),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    tune_seconds = run(tune_cmd, env)
    best = json.loads((work / "tune" / "best_params.json").read_text(encoding="utf-8"))
    model_top1 = best["model_final"]["valid_top1"]
    print("Baseline on the same cached features:", flush=True)
    scores = logistic_baseline(data, 0.2, args.seed, cache, args.device)
    default, tuned_c = scores["C=1"], max(scores.values())
    best_c = max(scores, key=lambda k: scores[k])
    print()
    print("| model (same cached features, same 80/20 split) | valid top-1 |")
    print("|---|---:|")
    print(
        f"| `dogclf tune --train-best` ({args.trials} trials, {tune_seconds:.0f} s), final model | {model_top1:.2%} |"
    )
    print(f"| LogisticRegression, lbfgs, C=1 | {default:.2%} |")
    print(f"| LogisticRegression, lbfgs, best C on valid ({best_c}) | {tuned_c:.2%} |")
    print()
    print(
        f"Target: tuned >= LogisticRegression: {'met' if model_top1 >= tuned_c else 'NOT met'} against the best C "
        f"({100 * (model_top1 - tuned_c):+.2f} points), {'met' if model_top1 >= default else 'NOT met'} against C=1 "
        f"({100 * (model_top1 - default):+.2f} points)."
    )
    print(f"Best: {json.dumps(best['params'])}; trials {json.dumps(best['trials'])}")
    print(f"{n} images of {data}, 20% held out (stratified, seed {args.seed}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="tune --train-best on all of imagewoof/train vs sklearn")
    parser.add_argument("--images", type=int, default=None, help="subset size (default 1500; with --full: all photos)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data trees, studies, models and caches here")
    args = parser.parse_args()
    if not args.full and args.images is None:
        args.images = 1500

    import dogclf

    dogclf.get_backbone(BACKBONE)  # fails early, with the fix, if the example plugin is not installed
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="dogclf-tune-speed-") as scratch:
        work = args.workdir or Path(scratch)
        work = work / f"run-{time.time_ns()}"  # fresh folders: empty caches, new studies
        work.mkdir(parents=True)
        (full if args.full else speed)(args, work, env)
    print(f"Command: python {shlex.join(['bench/tune_speed.py', *sys.argv[1:]])}")
    print(f"Machine: {machine(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
