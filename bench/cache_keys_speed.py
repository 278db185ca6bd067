"""What keying the feature cache by content costs: hashing every photo, and the stat index that spares it, against
extracting the same photos.

Over the whole of ``../shared/data/imagewoof/train`` (8,687 JPEGs), in one run:

* **hash every file**: ``dogclf.features.keys.content_keys`` with no index (read and sha256 every file, in threads),
  as a run does whose stat index is empty (the first run over a copied folder, a SageMaker channel);
* **stat index**: the same with an index recorded for these files (a ``stat`` per file and a look-up), as every
  later run does;
* **extraction**: dogclf's extraction rate with its defaults, measured on ``--sample`` of the photos after a warm-up,
  and extrapolated to the whole folder (what the cache saves).

The page cache is warmed by one untimed read of every file first, so the figures are CPU cost, not disk speed.

    python bench/cache_keys_speed.py [--sample 512]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _common import IMAGEWOOF, machine  # bench/ is on sys.path when a script runs

BACKBONE = "efficientnet_lite0"


def extraction_rate(paths: list[Path], sample: int) -> float:
    """dogclf's extraction images/s on ``sample`` of ``paths``, after a warm-up pass, from the first batch on."""
    import dogclf
    from dogclf.features.extract import ExtractOptions, iter_features
    from dogclf.model import build_model

    spec = dogclf.get_backbone(BACKBONE)
    backbone = build_model(spec, 10, weights="imagenet").backbone
    options = ExtractOptions()
    chosen = paths[:: max(1, len(paths) // sample)][:sample]
    for _ in iter_features(backbone, chosen[:128], spec.preprocessing, options):
        pass
    first_at, first = None, 0
    for positions, _ in iter_features(backbone, chosen, spec.preprocessing, options):
        if first_at is None:
            first_at, first = time.perf_counter(), len(positions)
    assert first_at is not None
    return (len(chosen) - first) / (time.perf_counter() - first_at)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=512, help="photos the extraction rate is measured on")
    args = parser.parse_args()

    from dogclf.features.keys import StatIndex, content_keys

    paths = sorted(p for p in IMAGEWOOF.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        sys.exit(f"No photos under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    for path in paths:  # warm the page cache: measure hashing, not the disk
        path.read_bytes()

    with tempfile.TemporaryDirectory(prefix="dogclf-keys-") as scratch:
        started = time.perf_counter()
        keys = content_keys(paths)
        hashing = time.perf_counter() - started
        index = StatIndex(Path(scratch) / "file-index.json", racy_seconds=0)
        content_keys(paths, index)
        index.save()
        again = StatIndex(Path(scratch) / "file-index.json")
        started = time.perf_counter()
        indexed = content_keys(paths, again)
        with_index = time.perf_counter() - started
    assert indexed == keys, "the index must give the same keys"
    assert again.hits == len(paths)

    rate = extraction_rate(paths, args.sample)
    extraction = len(paths) / rate
    print(f"{len(paths)} photos, {megabytes:.0f} MB, from {IMAGEWOOF}")
    print()
    print("| step | seconds | share of extraction |")
    print("|---|---:|---:|")
    print(f"| extract features ({rate:.1f} img/s, extrapolated) | {extraction:.1f} | 100% |")
    print(f"| hash every file (no stat index) | {hashing:.2f} | {100 * hashing / extraction:.2f}% |")
    print(f"| stat index (unchanged files) | {with_index:.2f} | {100 * with_index / extraction:.2f}% |")
    print()
    print(f"Command: python {shlex.join(['bench/cache_keys_speed.py', *sys.argv[1:]])}")
    print(f"Machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
