"""A torch Dataset over labelled image files, and the epoch-seeded sampler training uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dogclf.data.folder import Sample
from dogclf.data.images import load_rgb

__all__ = ["EpochShuffleSampler", "ImageDataset"]


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decodes each sample with Pillow and applies ``transform``.

    An item is an index, or ``(index, seed)`` from :class:`EpochShuffleSampler`:
    then the transform's random draws (augmentation) come from ``seed`` alone,
    whichever worker process runs it, so a resumed run augments exactly like an
    uninterrupted one.

    Args:
        samples: Labelled image files.
        transform: PIL image -> tensor.
        min_size: Shorter side the transform resizes to (enables JPEG draft mode).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        min_size: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        image = load_rgb(sample.path, min_size=self.min_size)
        if seed is None:
            return self.transform(image), sample.label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), sample.label


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """Shuffles indices from ``(seed, epoch)`` alone and gives each item its own seed.

    Unlike a generator-driven ``RandomSampler``, the order of epoch ``e`` does not
    depend on how many random draws earlier epochs (or DataLoader worker start-up)
    took, so training resumed at epoch ``e`` sees the same batches as an
    uninterrupted run. Call :meth:`set_epoch` before iterating.

    Args:
        length: Number of samples.
        seed: The run's seed.
    """

    def __init__(self, length: int, *, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.length,), generator=generator).tolist()
        return iter(zip(order, seeds, strict=True))
