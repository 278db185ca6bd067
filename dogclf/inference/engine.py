"""The inference engine: one fast, batched forward pass that every entry point uses.

An :class:`Engine` runs a trained :class:`~dogclf.model.DogClassifierNet` the way feature extraction does (under
:func:`torch.inference_mode`, channels-last, in small forward batches on a CPU, the backbone under bfloat16/float16
autocast when the model's precision says so) and returns both the logits and the backbone features of each batch
(:class:`EngineOutput`), so a feature-space score needs no second pass. The head runs in float32 on the float32
features, as it was trained and calibrated on the feature path.

:meth:`Engine.stream` runs the engine over many images: decoding threads (:class:`~dogclf.inference.preprocess.
ImagePreparer`) work ahead while the calling thread runs forward passes with the torch thread count of its
:class:`~dogclf.inference.threads.ThreadBudget`. On CUDA the uint8 batches are page-locked and copied without
blocking; normalisation happens on the device.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dogclf.errors import BackboneContractError, UnreadableImageError
from dogclf.inference.preprocess import ImagePreparer, Normaliser, stack
from dogclf.inference.threads import ThreadBudget, torch_threads

__all__ = ["Engine", "EngineBatch", "EngineOutput", "TorchEngine"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineOutput:
    """What one forward pass gives for a batch.

    Attributes:
        logits: ``(N, C)`` float32 CPU raw class scores.
        features: ``(N, F)`` float32 CPU backbone features (the head's input).
    """

    logits: torch.Tensor
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.logits)

    @staticmethod
    def cat(outputs: Sequence[EngineOutput], *, classes: int = 0, width: int = 0) -> EngineOutput:
        """Concatenates outputs in order (empty ``(0, classes)`` / ``(0, width)`` tensors for none)."""
        if not outputs:
            return EngineOutput(torch.empty(0, classes), torch.empty(0, width))
        return EngineOutput(torch.cat([o.logits for o in outputs]), torch.cat([o.features for o in outputs]))


@dataclass(frozen=True)
class EngineBatch:
    """One batch of :meth:`Engine.stream`.

    Attributes:
        positions: Indices (into the streamed sources) of the images in ``output``, in order.
        output: Their logits and features.
        failures: ``(index, reason)`` of sources in this stretch that could not be decoded.
    """

    positions: list[int]
    output: EngineOutput
    failures: list[tuple[int, str]] = field(default_factory=list)


class Engine:
    """The part every engine shares: image preparation, batching and streaming with overlapped decoding.

    A subclass implements :meth:`forward`. Attributes describe it for ``/info`` and start-up lines.

    Args:
        preprocessing: The backbone's input contract.
        device: Where the forward pass runs.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (already resolved).
        forward_batch: Most images per forward pass; ``None``: 8 on a CPU (small batches keep a convolution's
            activations in the caches, several times faster per image), 64 on CUDA.
    """

    name = "engine"

    def __init__(
        self, preprocessing: Any, *, device: torch.device, precision: str, forward_batch: int | None = None
    ) -> None:
        if forward_batch is not None and (isinstance(forward_batch, bool) or not isinstance(forward_batch, int)):
            raise ValueError(f"forward_batch must be an integer >= 1 or None, got {forward_batch!r}")
        if forward_batch is not None and forward_batch < 1:
            raise ValueError(f"forward_batch must be an integer >= 1 or None, got {forward_batch!r}")
        self.preprocessing = preprocessing
        self.device = device
        self.precision = precision
        self.forward_batch = forward_batch or (8 if device.type == "cpu" else 64)
        self.prepare = ImagePreparer(preprocessing)

    def forward(self, batch: torch.Tensor | Sequence[np.ndarray]) -> EngineOutput:  # pragma: no cover - abstract
        """Logits and features of a batch.

        The batch is prepared uint8 images (``(N, H, W, 3)`` or a list of ``(H, W, 3)``) or a normalised float
        ``(N, 3, H, W)`` tensor.
        """
        raise NotImplementedError

    def fit_budget(self, budget: ThreadBudget) -> ThreadBudget:
        """The budget this engine runs best (and safely) under, given the one planned; the torch engine keeps it."""
        return budget

    def use_threads(self, budget: ThreadBudget) -> None:
        """Tells the engine the thread budget its forward passes run under.

        The torch engine sets torch's count in the thread that runs each pass instead (see
        :func:`~dogclf.inference.threads.torch_threads`); engines with their own thread pools size them here.
        """
        del budget

    def describe(self) -> str:
        """E.g. ``torch bf16 on cpu, forward batch 8``."""
        return f"{self.name} {self.precision} on {self.device}, forward batch {self.forward_batch}"

    def stream(
        self,
        sources: Iterable[Any],
        *,
        budget: ThreadBudget | None = None,
        prepare: Callable[[Any], np.ndarray] | None = None,
    ) -> Iterator[EngineBatch]:
        """Runs the engine over images: decoding threads work ahead while forward workers run batches.

        Args:
            sources: Paths, image bytes or PIL images (anything ``prepare`` takes).
            budget: Decoding threads, forward workers and their torch threads (default :meth:`ThreadBudget.plan`).
                With one forward worker the passes run in the calling thread.
            prepare: Source -> ``(H, W, 3)`` uint8 array; default :attr:`prepare` (decode, resize, crop).

        Yields:
            :class:`EngineBatch` in source order, each with at most :attr:`forward_batch` images; a source that
            cannot be decoded is reported in ``failures`` and left out.
        """
        budget = self.fit_budget(budget or ThreadBudget.plan())
        load = prepare or self.prepare
        self.use_threads(budget)
        with contextlib.ExitStack() as stack_:
            pool = None
            if budget.decode_workers > 0:
                pool = ThreadPoolExecutor(max_workers=budget.decode_workers, thread_name_prefix="dogclf-decode")
                stack_.callback(pool.shutdown, wait=True, cancel_futures=True)  # also when the caller stops early
            ahead = self.forward_batch * (1 + budget.forward_workers) + 2 * budget.decode_workers
            groups = _groups(_decoded_in_order(sources, load, pool, ahead=ahead), self.forward_batch)
            if budget.forward_workers == 1:
                stack_.enter_context(torch_threads(budget.forward_threads))
                for positions, arrays, failures in groups:
                    yield EngineBatch(positions, self._forward_or_empty(arrays), failures)
                return
            workers = ThreadPoolExecutor(
                max_workers=budget.forward_workers,
                thread_name_prefix="dogclf-forward",
                initializer=_set_threads,
                initargs=(budget.forward_threads,),
            )
            stack_.callback(workers.shutdown, wait=True, cancel_futures=True)
            yield from self._in_workers(groups, workers, budget.forward_workers + 1)

    def _forward_or_empty(self, arrays: list[np.ndarray]) -> EngineOutput:
        return self.forward(arrays) if arrays else EngineOutput(torch.empty(0, 0), torch.empty(0, 0))

    def _in_workers(
        self,
        groups: Iterator[tuple[list[int], list[np.ndarray], list[tuple[int, str]]]],
        pool: ThreadPoolExecutor,
        depth: int,
    ) -> Iterator[EngineBatch]:
        """Runs groups' forward passes in ``pool``, at most ``depth`` in flight, yielding them in order."""
        pending: collections.deque[tuple[list[int], Future[EngineOutput], list[tuple[int, str]]]] = collections.deque()
        for positions, arrays, failures in groups:
            pending.append((positions, pool.submit(self._forward_or_empty, arrays), failures))
            if len(pending) >= depth:
                done_positions, future, done_failures = pending.popleft()
                yield EngineBatch(done_positions, future.result(), done_failures)
        while pending:
            done_positions, future, done_failures = pending.popleft()
            yield EngineBatch(done_positions, future.result(), done_failures)


def _set_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _groups(
    decoded: Iterator[tuple[int, np.ndarray | str]], size: int
) -> Iterator[tuple[list[int], list[np.ndarray], list[tuple[int, str]]]]:
    """``(positions, arrays, failures)`` of up to ``size`` decoded images each, in order."""
    positions: list[int] = []
    arrays: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    for index, item in decoded:
        if isinstance(item, str):
            failures.append((index, item))
            continue
        positions.append(index)
        arrays.append(item)
        if len(arrays) == size:
            yield positions, arrays, failures
            positions, arrays, failures = [], [], []
    if arrays or failures:
        yield positions, arrays, failures


def _decode_one(load: Callable[[Any], np.ndarray], source: Any) -> np.ndarray | str:
    try:
        return load(source)
    except UnreadableImageError as exc:
        return str(exc)
    except OSError as exc:  # a missing or unreadable file
        return f"{source}: {exc.strerror or exc}" if isinstance(exc, FileNotFoundError) else f"{source}: {exc}"


def _decoded_in_order(
    sources: Iterable[Any], load: Callable[[Any], np.ndarray], pool: ThreadPoolExecutor | None, *, ahead: int
) -> Iterator[tuple[int, np.ndarray | str]]:
    """``(index, array or failure reason)`` in source order, with up to ``ahead`` decodes running in ``pool``."""
    items = enumerate(sources)
    if pool is None:
        for index, source in items:
            yield index, _decode_one(load, source)
        return
    pending: collections.deque[tuple[int, Future[np.ndarray | str]]] = collections.deque()
    for index, source in items:
        pending.append((index, pool.submit(_decode_one, load, source)))
        if len(pending) >= ahead:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


class TorchEngine(Engine):
    """The eager torch engine around a :class:`~dogclf.model.DogClassifierNet` (or any backbone + head pair).

    The network is put in eval mode, on ``device``, in channels-last memory format; it is used as given (no copy),
    so build the engine once and keep it.

    Args:
        net: A module with ``backbone`` and ``head`` submodules.
        preprocessing: The backbone's input contract.
        device: Where it runs.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (already resolved, see
            :func:`~dogclf.inference.precision.choose_precision`).
        forward_batch: Most images per forward pass (see :class:`Engine`).
        channels_last: Run convolutions in channels-last memory format (oneDNN and cuDNN are faster in it).
    """

    name = "torch"

    def __init__(
        self,
        net: nn.Module,
        preprocessing: Any,
        *,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        forward_batch: int | None = None,
        channels_last: bool = True,
    ) -> None:
        device = torch.device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"engine precision must be fp32, bf16 or fp16 (resolved), got {precision!r}")
        super().__init__(preprocessing, device=device, precision=precision, forward_batch=forward_batch)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(device, memory_format=memory_format).eval()
        self.backbone: nn.Module = net.get_submodule("backbone")
        self.head: nn.Module = net.get_submodule("head")
        self.channels_last = channels_last
        self.normalise = Normaliser(preprocessing, device)
        self._pin = device.type == "cuda"

    def _autocast(self) -> Any:
        if self.precision in _DTYPES:
            return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])
        return contextlib.nullcontext()

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor | Sequence[np.ndarray]) -> EngineOutput:
        """Logits and features of a batch (see :meth:`Engine.forward`), in :attr:`forward_batch` chunks."""
        if not isinstance(batch, torch.Tensor):
            batch = stack(batch, pin=self._pin)
        elif self._pin and batch.device.type == "cpu" and batch.dtype == torch.uint8:
            batch = batch.pin_memory()
        if len(batch) == 0:
            return EngineOutput.cat([], classes=0, width=0)
        features = [self._features(chunk) for chunk in batch.split(self.forward_batch)]
        feats = torch.cat(features) if len(features) > 1 else features[0]
        logits = self.head(feats)  # float32, on float32 features: as the head was trained and calibrated
        return EngineOutput(logits.float().cpu(), feats.cpu())

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        x = self.normalise(chunk)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            output = self.backbone(x)
        if output.ndim != 2 or output.shape[0] != x.shape[0]:
            raise BackboneContractError(
                f"the backbone returned shape {tuple(output.shape)} for {x.shape[0]} images; it must return "
                "(batch, num_features) features"
            )
        return output.float()
