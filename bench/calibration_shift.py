"""Does the temperature hold off the training distribution? ECE on validation photos and on shifted photos.

On the cached ``efficientnet_lite0`` features of ``../shared/data/imagewoof/train``: the photos of all 10 breeds are
split 60/20/20 (stratified, seeded) into train / valid / test, and the head is fitted as ``dogclf train`` fits it
(L-BFGS, C by 5-fold CV on train). Then the temperature is fitted on each candidate set:

* ``valid``: the validation photos' logits (dogclf before issue 18);
* ``oof``: the out-of-fold logits of the cross-validation that chose C (each training photo scored by the fold fit
  that did not see it);
* ``oof+valid``: both pooled;
* ``augment``: augmented views of the validation photos (random resized crop, flip, colour jitter);
* ``valid+augment``: the validation photos and their augmented views pooled;
* the shifted test photos themselves: an oracle no method can have, the best any one temperature could do there.

and the expected calibration error (15 bins) is measured on the validation photos, on the test photos, and on the
**shifted** test photos: the same test photos cropped off centre, cut to a 64-160 px shorter side and re-compressed
at JPEG quality 15-60 (``bench/_views.py``), the way users' photos differ from curated ImageNet ones. The backbone
saw the Imagewoof photos while pretraining; it never saw these views.

With ``--train-views`` it also fits the head on the training photos plus one degraded view of each (the shift's
kind of transform, other random draws), with the temperature on valid and on valid plus its degraded views: the
head, not the temperature, is what makes the shifted ECE move (docs/benchmarks.md).

    python bench/calibration_shift.py [--train-views] [--views-dir /tmp/dogclf-views] [--cache-dir DIR] [--seed 0]

The first run writes the views and extracts their features (about 3,500 photos, a minute or two on 2 cores).
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

CANDIDATES = ("valid", "oof", "oof+valid", "augment", "valid+augment")


def _ece(logits: Any, labels: Any, temperature: float) -> float:
    import torch

    from dogclf.training.calibration import expected_calibration_error

    return expected_calibration_error(torch.softmax(logits / temperature, dim=1), labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views-dir", type=Path, default=Path("/tmp/dogclf-views"), help="where the views go")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: dogclf's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-views",
        action="store_true",
        help="also fit a head on the training photos plus one degraded view of each (the shift's kind of "
        "transform, other random draws: seed + 1), and its temperature on valid with and without the valid photos' "
        "degraded views; report its ECE the same way",
    )
    args = parser.parse_args()

    import torch

    from dogclf.features.cache import default_cache_dir
    from dogclf.features.pipeline import FeatureSet
    from dogclf.model import DogClassifierNet, HeadConfig, build_head
    from dogclf.training.calibration import fit_temperature
    from dogclf.training.config import TrainConfig
    from dogclf.training.lbfgs import fit_lbfgs_head, stratified_fold_ids

    cache = args.cache_dir or default_cache_dir(os.environ)
    x, y, classes = imagewoof_features(cache, "cpu")
    paths = imagewoof_paths()
    part = stratified_fold_ids(y, 5, args.seed)
    rows = {"train": part <= 2, "valid": part == 3, "test": part == 4}
    sets = {k: FeatureSet(x[v], y[v]) for k, v in rows.items()}
    picked = {k: [paths[i] for i in v.nonzero().reshape(-1).tolist()] for k, v in rows.items()}
    shift = view_features(write_views(picked["test"], args.views_dir, "shift", args.seed), sets["test"].labels, cache)
    views = write_views(picked["valid"], args.views_dir, "augment", args.seed)
    augment = view_features(views, sets["valid"].labels, cache)

    torch.manual_seed(args.seed)
    model = DogClassifierNet(torch.nn.Identity(), build_head(x.shape[1], len(classes), HeadConfig()), frozen=True)
    _, fit = fit_lbfgs_head(model, sets["train"], sets["valid"], TrainConfig(device="cpu", seed=args.seed))
    with torch.no_grad():
        logits = {k: model.head(s.features) for k, s in sets.items()}
        logits["shift"] = model.head(shift)
        logits["augment"] = model.head(augment)
    labels = {k: s.labels for k, s in sets.items()}
    labels["shift"], labels["augment"] = sets["test"].labels, sets["valid"].labels
    if fit.cv is None or fit.cv.oof_logits is None:
        raise SystemExit("the cross-validation kept no out-of-fold logits")
    logits["oof"], labels["oof"] = fit.cv.oof_logits, sets["train"].labels

    def pooled(*names: str) -> tuple[Any, Any]:
        return torch.cat([logits[n] for n in names]), torch.cat([labels[n] for n in names])

    fitted_on = {
        "valid": pooled("valid"),
        "oof": pooled("oof"),
        "oof+valid": pooled("oof", "valid"),
        "augment": pooled("augment"),
        "valid+augment": pooled("valid", "augment"),
        "shifted test itself (oracle, not a method)": pooled("shift"),
    }
    top1 = {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in ("valid", "test", "shift")}
    print(
        f"C={fit.c:g}; top-1 valid {top1['valid']:.4f}, test {top1['test']:.4f}, shifted test {top1['shift']:.4f} "
        f"({len(labels['valid'])} / {len(labels['test'])} / {len(labels['shift'])} photos)\n"
    )
    print("| temperature fitted on | T | ECE valid | ECE test | ECE shifted test |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| none (T=1) | 1.00 | {_ece(logits['valid'], labels['valid'], 1.0):.4f} | "
        f"{_ece(logits['test'], labels['test'], 1.0):.4f} | {_ece(logits['shift'], labels['shift'], 1.0):.4f} |"
    )
    for name, (z, t) in fitted_on.items():
        temperature = fit_temperature(z, t)
        eces = [_ece(logits[k], labels[k], temperature) for k in ("valid", "test", "shift")]
        print(f"| {name} | {temperature:.2f} | " + " | ".join(f"{e:.4f}" for e in eces) + " |")
    if args.train_views:
        other = args.views_dir / f"seed{args.seed + 1}"
        degraded = {
            k: FeatureSet(
                view_features(write_views(picked[k], other, "shift", args.seed + 1), labels[k], cache), labels[k]
            )
            for k in ("train", "valid")
        }
        _with_degraded_views(sets, degraded, shift, labels, fit.c, args.seed)
    print(f"\nCommand: python {shlex.join(['bench/calibration_shift.py', *sys.argv[1:]])}")
    print(f"Machine: {machine('cpu')}")
    return 0


def _with_degraded_views(sets: Any, degraded: Any, shift: Any, labels: Any, c: float, seed: int) -> None:
    """Fits the head (same C) on train plus its degraded views; prints top-1 and ECE for two temperature fits.

    The temperature is fitted on the validation photos, and on them plus their degraded views (``degraded["valid"]``).
    """
    import torch

    from dogclf.features.pipeline import FeatureSet
    from dogclf.model import DogClassifierNet, HeadConfig, build_head
    from dogclf.training.calibration import fit_temperature
    from dogclf.training.config import TrainConfig
    from dogclf.training.lbfgs import fit_lbfgs_head

    both = FeatureSet(
        torch.cat([sets["train"].features, degraded["train"].features]),
        torch.cat([sets["train"].labels, degraded["train"].labels]),
    )
    torch.manual_seed(seed)
    width, classes = both.features.shape[1], int(both.labels.max()) + 1
    model = DogClassifierNet(torch.nn.Identity(), build_head(width, classes, HeadConfig()), frozen=True)
    fit_lbfgs_head(model, both, sets["valid"], TrainConfig(device="cpu", seed=seed, penalty_c=c))
    with torch.no_grad():
        views = {k: model.head(sets[k].features) for k in ("valid", "test")}
        views["shift"] = model.head(shift)
        degraded_valid = model.head(degraded["valid"].features)
    top1 = {k: float((v.argmax(1) == labels[k]).float().mean()) for k, v in views.items()}
    print(
        f"\nHead fitted on train + one degraded view of each training photo (C={c:g}): top-1 valid "
        f"{top1['valid']:.4f}, test {top1['test']:.4f}, shifted test {top1['shift']:.4f}\n"
    )
    print("| temperature fitted on | T | ECE valid | ECE test | ECE shifted test |")
    print("|---|---:|---:|---:|---:|")
    candidates = {
        "valid": (views["valid"], labels["valid"]),
        "valid + its degraded views": (torch.cat([views["valid"], degraded_valid]), labels["valid"].repeat(2)),
    }
    for name, (z, t) in candidates.items():
        temperature = fit_temperature(z, t)
        eces = [_ece(views[k], labels[k], temperature) for k in ("valid", "test", "shift")]
        print(f"| {name} | {temperature:.2f} | " + " | ".join(f"{e:.4f}" for e in eces) + " |")


if __name__ == "__main__":
    sys.exit(main())
