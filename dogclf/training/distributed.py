"""Training in several processes (``torchrun``; a SageMaker job with several instances or GPUs).

torchrun starts one process per GPU (or per host on CPU instances) with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`process_group` reads them (from an environment mapping) and joins
the group (NCCL on GPUs, gloo on CPUs). Then:

- **feature extraction is sharded**: rank ``r`` of ``W`` extracts images ``r, r + W, ...`` of every split
  (:func:`shard_splits`), and :func:`gather_features` puts every rank's features back in the splits' order, on every
  rank; each rank writes its own shards to the feature cache (shard names carry the process id);
- on the feature path every rank then trains the same head on the same features from the same seed, so they agree
  without talking; only rank 0 logs, checkpoints and saves;
- training through the backbone (``--augment``, ``--no-freeze``) runs under DistributedDataParallel: every global
  batch of the epoch order is split between the ranks (:class:`ShardedEpochSampler`), gradients are averaged, and
  the epoch metrics are summed over ranks (:func:`all_reduce_sums`), so ``--batch-size`` keeps its meaning (images
  per optimizer step in all) and the result matches one process up to floating-point order and BatchNorm statistics
  (per rank with ``--no-freeze``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dogclf.data.dataset import EpochShuffleSampler
    from dogclf.data.folder import DataSplits
    from dogclf.features.pipeline import FeatureSet

__all__ = [
    "ProcessGroup",
    "ShardedEpochSampler",
    "all_reduce_sums",
    "gather_features",
    "process_group",
    "shard_splits",
]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes.

    Attributes:
        rank: Its rank, 0 to ``world_size - 1``.
        world_size: How many processes train.
        local_rank: Its rank on this host (its GPU index).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, checkpoints and writes the model."""
        return self.rank == 0

    def barrier(self) -> None:
        """Waits until every process gets here."""
        import torch.distributed as dist

        dist.barrier()


def process_group(environ: Mapping[str, str], device: torch.device) -> ProcessGroup | None:
    """Joins the torchrun process group described by ``environ``; ``None`` when there is one process.

    Raises:
        ValueError: Malformed ``RANK``/``WORLD_SIZE`` variables.
    """
    import torch.distributed as dist

    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    try:
        group = ProcessGroup(int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", environ["RANK"])))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not integers ({exc})") from None
    if not dist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key in environ:
                os.environ.setdefault(key, environ[key])  # env:// reads the process environment
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=group.rank, world_size=world)
    return group


def shard_splits(splits: DataSplits, group: ProcessGroup) -> DataSplits:
    """The splits with every ``world_size``-th sample from this rank's offset (its share of the extraction)."""
    step, start = group.world_size, group.rank
    share = {name: getattr(splits, name)[start::step] for name in ("train", "valid", "test")}
    return replace(splits, **share)


def gather_features(
    local: Mapping[str, FeatureSet],
    splits: DataSplits,
    unreadable: Sequence[tuple[Path, str]],
    group: ProcessGroup,
) -> tuple[dict[str, FeatureSet], list[tuple[Path, str]]]:
    """Every rank's share of each split put back in the split's order, on every rank.

    Args:
        local: This rank's feature sets of :func:`shard_splits` (its unreadable images left out).
        splits: All the splits (as before sharding).
        unreadable: The ``(path, reason)`` this rank could not decode.
        group: The process group.

    Returns:
        The features of every split without any rank's unreadable images, and all the unreadable images (drop them
        from ``splits`` so its samples and the features line up).
    """
    import torch
    import torch.distributed as dist

    from dogclf.features.pipeline import FeatureSet

    shares: list[Any] = [None] * group.world_size
    mine = ({name: (fs.features, fs.labels) for name, fs in local.items()}, list(unreadable))
    dist.all_gather_object(shares, mine)
    everything = list(dict.fromkeys(item for _, bad in shares for item in bad))
    bad_paths = {path for path, _ in everything}
    gathered: dict[str, FeatureSet] = {}
    for name in ("train", "valid", "test"):
        samples = getattr(splits, name)
        kept = [g for g in range(len(samples)) if samples[g].path not in bad_paths]
        row = {g: i for i, g in enumerate(kept)}
        width = next((features.shape[1] for part, _ in shares if (features := part[name][0]).numel()), 0)
        features = torch.empty(len(kept), width, dtype=torch.float32)
        labels = torch.tensor([samples[g].label for g in kept], dtype=torch.long)
        for rank, (part, _) in enumerate(shares):
            owned = [g for g in range(rank, len(samples), group.world_size) if g in row]
            if owned:
                features[torch.tensor([row[g] for g in owned])] = part[name][0]
        gathered[name] = FeatureSet(features=features, labels=labels)
    return gathered, everything


class ShardedEpochSampler:
    """This rank's part of every global batch of an :class:`~dogclf.data.dataset.EpochShuffleSampler` order.

    Global batch ``k`` (``batch_size`` items of the epoch order) is cut into ``world_size`` consecutive parts, as
    even as possible; rank ``r`` yields part ``r`` of every batch. A last batch too small to give every rank an item
    is left out (every rank must take the same number of steps).

    Args:
        base: The epoch order (the one-process run's).
        batch_size: Items per optimizer step, all ranks together.
        group: This process's rank and the world size.
    """

    def __init__(self, base: EpochShuffleSampler, batch_size: int, group: ProcessGroup) -> None:
        self.base = base
        self.batch_size = batch_size
        self.group = group

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration follows."""
        self.base.set_epoch(epoch)

    def batches(self) -> list[list[tuple[int, int]]]:
        """This rank's items of each step of the current epoch."""
        order = list(self.base)
        world, rank = self.group.world_size, self.group.rank
        steps: list[list[tuple[int, int]]] = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < world:
                break
            cuts = [len(batch) * i // world for i in range(world + 1)]
            steps.append(batch[cuts[rank] : cuts[rank + 1]])
        return steps

    def step_shares(self) -> list[float]:
        """For each step of the current epoch, ``world_size x`` this rank's fraction of the step's images.

        Scaling a rank's mean loss by it makes DistributedDataParallel's gradient average equal the gradient of
        the whole step's mean loss.
        """
        order = len(self.base)
        world, rank = self.group.world_size, self.group.rank
        shares = []
        for start in range(0, order, self.batch_size):
            size = min(self.batch_size, order - start)
            if size < world:
                break
            cuts = [size * i // world for i in range(world + 1)]
            shares.append(world * (cuts[rank + 1] - cuts[rank]) / size)
        return shares

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(len(self.base), self.batch_size)
        return full + (1 if rest >= self.group.world_size else 0)


def all_reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank (the epoch's loss totals, correct and seen counts)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]
