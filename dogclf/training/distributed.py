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
    local: Mapping[str, FeatureSet], sizes: Mapping[str, int], group: ProcessGroup
) -> dict[str, FeatureSet]:
    """Every rank's share of each split, interleaved back into the split's order, on every rank."""
    import torch
    import torch.distributed as dist

    from dogclf.features.pipeline import FeatureSet

    shares: list[Any] = [None] * group.world_size
    dist.all_gather_object(shares, {name: (fs.features, fs.labels) for name, fs in local.items()})
    gathered: dict[str, FeatureSet] = {}
    for name, size in sizes.items():
        parts = [share[name] for share in shares]
        width = next((f.shape[1] for f, _ in parts if f.numel()), 0)
        features = torch.empty(size, width, dtype=torch.float32)
        labels = torch.empty(size, dtype=torch.long)
        for rank, (part_features, part_labels) in enumerate(parts):
            if len(part_labels):
                features[rank :: group.world_size] = part_features
                labels[rank :: group.world_size] = part_labels
        gathered[name] = FeatureSet(features=features, labels=labels)
    return gathered


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
