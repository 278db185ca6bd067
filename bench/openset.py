"""Open-set check of the "unknown" scores: train on 8 of the 10 breeds, and use the other 2 as photos to flag.

On the cached ``efficientnet_lite0`` features of ``../shared/data/imagewoof/train``, for each of ``--rounds`` pairs of
held-out breeds (by default 5 disjoint pairs, so every breed is an unknown once): the 8 known breeds' photos are split
60/20/20 (stratified, seeded) into train / valid / test; the head is fitted as ``dogclf train`` does by default
(L-BFGS, C by 5-fold CV on train), the temperature and softmax threshold are fitted on valid, and the novelty score
(k-nearest-neighbour distance, :mod:`dogclf.novelty`) on train with its threshold on valid, both keeping 95% of valid
as known.
Then the known test photos and **all** photos of the 2 held-out breeds are scored, exactly as ``dogclf evaluate
--unknown-dir`` scores them: AUROC (threshold-free) and, at each threshold, the share of unknown photos flagged and of
known test photos flagged.

    python bench/openset.py [--rounds 5] [--cache-dir DIR]

Verify quickly with ``--rounds 1 --subset 800``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import REPO, machine  # bench/ is on sys.path when a script runs
from _features import imagewoof_features

NAMES = REPO / "examples" / "imagewoof_names.txt"


def _names(classes: list[str]) -> list[str]:
    from dogclf.data.folder import read_names_file

    names = read_names_file(NAMES) if NAMES.is_file() else {}
    return [names.get(c, c) for c in classes]


def one_round(x: Any, y: Any, held_out: tuple[int, int], seed: int) -> dict[str, Any]:
    """Fits on the known breeds and scores known test photos against the held-out breeds' photos."""
    import torch

    from dogclf.features.pipeline import FeatureSet
    from dogclf.model import DogClassifierNet, HeadConfig, build_head
    from dogclf.novelty import fit_novelty
    from dogclf.openset import auroc
    from dogclf.training.calibration import calibrate
    from dogclf.training.config import TrainConfig
    from dogclf.training.lbfgs import fit_lbfgs_head, stratified_fold_ids

    unknown = (y == held_out[0]) | (y == held_out[1])
    known_rows = (~unknown).nonzero().reshape(-1)
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    kept = [c for c in range(int(y.max()) + 1) if c not in held_out]
    remap[torch.tensor(kept)] = torch.arange(len(kept))
    labels = remap[y[known_rows]]
    part = stratified_fold_ids(labels, 5, seed)  # 3 folds train, 1 valid, 1 test: 60/20/20
    rows = {"train": known_rows[part <= 2], "valid": known_rows[part == 3], "test": known_rows[part == 4]}
    sets = {k: FeatureSet(x[v], remap[y[v]]) for k, v in rows.items()}

    torch.manual_seed(seed)
    model = DogClassifierNet(torch.nn.Identity(), build_head(x.shape[1], len(kept), HeadConfig()), frozen=True)
    _, fit = fit_lbfgs_head(model, sets["train"], sets["valid"], TrainConfig(device="cpu", seed=seed))
    with torch.no_grad():
        valid_logits = model.head(sets["valid"].features)
        test_logits = model.head(sets["test"].features)
        unknown_logits = model.head(x[unknown])
    calibration = calibrate(valid_logits, sets["valid"].labels)
    scorer = fit_novelty(sets["train"].features, sets["valid"].features)

    def top(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / calibration.temperature, dim=1).max(dim=1).values

    known_top, unknown_top = top(test_logits), top(unknown_logits)
    known_novel, unknown_novel = scorer.score(sets["test"].features), scorer.score(x[unknown])
    threshold = calibration.unknown_threshold
    return {
        "held_out": held_out,
        "c": fit.c,
        "test_top1": float((test_logits.argmax(1) == sets["test"].labels).float().mean()),
        "n_known": len(rows["test"]),
        "n_unknown": int(unknown.sum()),
        "softmax_auroc": auroc(-unknown_top, -known_top),
        "softmax_unknown_flagged": float((unknown_top < threshold).float().mean()),
        "softmax_known_flagged": float((known_top < threshold).float().mean()),
        "novelty_auroc": auroc(unknown_novel, known_novel),
        "novelty_unknown_flagged": float(scorer.is_novel(unknown_novel).float().mean()),
        "novelty_known_flagged": float(scorer.is_novel(known_novel).float().mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="pairs of held-out breeds (default 5: every breed once)")
    parser.add_argument("--subset", type=int, default=None, help="use this many photos (stratified), to check quickly")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: dogclf's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from dogclf.features.cache import default_cache_dir

    x, y, classes = imagewoof_features(args.cache_dir or default_cache_dir(os.environ), "cpu")
    if args.subset:
        keep = torch.cat([(y == c).nonzero().reshape(-1)[: args.subset // len(classes)] for c in range(len(classes))])
        x, y = x[keep], y[keep]
    names = _names(classes)
    rounds = []
    for r in range(args.rounds):
        pair = (2 * r % len(classes), (2 * r + 1) % len(classes))
        result = one_round(x, y, pair, args.seed)
        rounds.append(result)
        print(
            f"unknown: {names[pair[0]]} + {names[pair[1]]} ({result['n_unknown']} photos; known test "
            f"{result['n_known']}, top-1 {result['test_top1']:.4f}, C={result['c']:g}): AUROC softmax "
            f"{result['softmax_auroc']:.3f}, novelty {result['novelty_auroc']:.3f}; flagged unknown "
            f"{result['softmax_unknown_flagged']:.1%} vs {result['novelty_unknown_flagged']:.1%}, known "
            f"{result['softmax_known_flagged']:.1%} vs {result['novelty_known_flagged']:.1%}",
            flush=True,
        )
    print("\n| score | AUROC (mean, min-max over rounds) | unknown photos flagged | known test photos flagged |")
    print("|---|---:|---:|---:|")
    for score in ("softmax", "novelty"):
        areas = [r[f"{score}_auroc"] for r in rounds]
        flagged = statistics.mean(r[f"{score}_unknown_flagged"] for r in rounds)
        false = statistics.mean(r[f"{score}_known_flagged"] for r in rounds)
        label = "max softmax (calibrated)" if score == "softmax" else "kNN novelty (k=10, cosine)"
        print(
            f"| {label} | {statistics.mean(areas):.3f} ({min(areas):.3f}-{max(areas):.3f}) | {flagged:.1%} | "
            f"{false:.1%} |"
        )
    print(f"\nCommand: python {shlex.join(['bench/openset.py', *sys.argv[1:]])}")
    print(f"Machine: {machine('cpu')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
