"""How many degraded views, and which temperature, hold calibration on shifted photos? (issue 18, round 4)

The split and the shift of ``bench/calibration_shift.py``: the cached ``efficientnet_lite0`` features of
``../shared/data/imagewoof/train`` split 60/20/20 (stratified, seeded by ``--split-seed``, 0 there) into train / valid /
test, and the test photos' ``shift`` views (``bench/_views.py``: a crop of 30-90% of the area off centre, a 64-160 px
shorter side, JPEG quality 15-60). The head (L-BFGS, C = ``--penalty-c``, by default 0.1: what the 5-fold CV picks on
this split) is fitted on the training photos plus ``0..--views`` degraded views of each (the same transform, other
random draws: seed 1, views 1..N, written under ``--views-dir/seed1/shift-v<N>``); its temperature is fitted on the
validation photos alone, and on them pooled with their own degraded views, the views weighted ``w`` in all (``w`` =
0.25, 0.5, 1: a weight of 1 counts each photo's views as much as the photo). With ``--smooth EPS`` the head with all
``--views`` is also fitted with the views' targets smoothed by EPS (the clean photos' targets one-hot): a head taught to
be less sure of degraded photos only.

For each, top-1 on valid and on the shifted test photos, and the ECE (15 bins) on valid, test and shifted test.

    python bench/calibration_views.py [--views 2] [--smooth 0.1 0.2] [--penalty-c 0.1] [--views-dir /tmp/dogclf-views]

Writing and extracting the views costs about 7,000 photos per view on a first run (minutes on 2 cores); later runs
read them from the feature cache.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from _common import machine  # bench/ is on sys.path when a script runs
from _features import imagewoof_features, imagewoof_paths
from _views import view_features, write_views

WEIGHTS = (0.25, 0.5, 1.0)


def _weighted_temperature(logits: Any, labels: Any, weights: Any) -> float:
    """The temperature minimising the ``weights``-weighted mean NLL (L-BFGS on log T)."""
    import torch

    z, w = logits.double(), weights.double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = (torch.nn.functional.cross_entropy(z / log_t.exp(), labels, reduction="none") * w).sum() / w.sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def _fit(train: Any, labels: Any, views: list[Any], smooth: float, classes: int, c: float) -> tuple[Any, Any]:
    """``(weight, bias)`` of the head on the training photos plus ``views``, the views' targets smoothed."""
    import torch

    from dogclf.training.lbfgs import fit_logistic

    hard = torch.nn.functional.one_hot(labels, classes).to(train.dtype)
    soft = hard * (1 - smooth) + smooth / classes
    x = torch.cat([train, *views])
    y = torch.cat([hard] + [soft] * len(views))  # class probabilities: CrossEntropyLoss takes them as targets
    weight, bias, _, _ = fit_logistic(x, y, num_classes=classes, c=c)
    return weight, bias


def _rows(name: str, logits: dict[str, Any], labels: dict[str, Any], views: int) -> list[str]:
    import torch

    from dogclf.training.calibration import expected_calibration_error

    valid = labels["valid"]
    fits = {"valid": _weighted_temperature(logits["valid"], valid, torch.ones(len(valid)))}
    for w in WEIGHTS if views else ():
        pooled = torch.cat([logits["valid"], logits["valid_views"]])
        weights = torch.cat([torch.ones(len(valid)), torch.full((len(logits["valid_views"]),), w / views)])
        fits[f"valid + views, w={w:g}"] = _weighted_temperature(pooled, valid.repeat(1 + views), weights)
    top1 = {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in ("valid", "shift")}
    lines = []
    for fitted_on, t in fits.items():
        eces = [
            expected_calibration_error(torch.softmax(logits[k] / t, 1), labels[k]) for k in ("valid", "test", "shift")
        ]
        lines.append(
            f"| {name} | {fitted_on} | {t:.2f} | {top1['valid']:.4f} / {top1['shift']:.4f} | "
            + " | ".join(f"{e:.4f}" for e in eces)
            + " |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=2, help="most degraded views per training photo (default 2)")
    parser.add_argument("--smooth", type=float, nargs="*", default=[], help="also fit with the views' targets smoothed")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 60/20/20 split (default 0)")
    parser.add_argument("--penalty-c", type=float, default=0.1, help="the head's C (default 0.1, the CV's choice)")
    parser.add_argument("--views-dir", type=Path, default=Path("/tmp/dogclf-views"), help="where the views go")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: dogclf's default)")
    args = parser.parse_args()

    import torch

    from dogclf.data.degrade import degraded_view
    from dogclf.features.cache import default_cache_dir
    from dogclf.training.lbfgs import stratified_fold_ids

    cache = args.cache_dir or default_cache_dir(os.environ)
    x, y, classes = imagewoof_features(cache, "cpu")
    paths = imagewoof_paths()
    part = stratified_fold_ids(y, 5, args.split_seed)
    masks = {"train": part <= 2, "valid": part == 3, "test": part == 4}
    features = {k: x[m] for k, m in masks.items()}
    labels = {k: y[m] for k, m in masks.items()}
    picked = {k: [paths[i] for i in m.nonzero().reshape(-1).tolist()] for k, m in masks.items()}
    features["shift"] = view_features(write_views(picked["test"], args.views_dir, "shift", 0), labels["test"], cache)
    labels["shift"] = labels["test"]

    def degraded(split: str, view: int) -> Any:
        folder = args.views_dir / "seed1" / f"shift-v{view}"
        written = []
        for path in picked[split]:
            target = folder / path.parent.name / (path.stem + ".jpg")
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                image, quality = degraded_view(path, seed=1, view=view)
                image.save(target, quality=quality)
            written.append(target)
        return view_features(written, labels[split].tolist(), cache)

    train_views = [degraded("train", v) for v in range(1, args.views + 1)]
    valid_views = [degraded("valid", v) for v in range(1, args.views + 1)]
    print("| head fitted on | temperature fitted on | T | top-1 valid / shifted | ECE valid | ECE test | ECE shifted |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for smooth in [0.0, *args.smooth]:
        for n in range(args.views + 1) if smooth == 0 else [args.views]:
            weight, bias = _fit(
                features["train"], labels["train"], train_views[:n], smooth, len(classes), args.penalty_c
            )
            logits = {k: features[k] @ weight.T + bias for k in ("valid", "test", "shift")}
            logits["valid_views"] = torch.cat(valid_views[:n]) @ weight.T + bias if n else None
            name = f"train + {n} view{'s' if n != 1 else ''}" + (
                f", views' targets smoothed {smooth:g}" if smooth else ""
            )
            print("\n".join(_rows(name, logits, labels, n)), flush=True)
    print(f"\nCommand: python {shlex.join(['bench/calibration_views.py', *sys.argv[1:]])}")
    print(f"Machine: {machine('cpu')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
