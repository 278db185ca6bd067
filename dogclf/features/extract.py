"""One fast pass of a frozen backbone over image files: batched, overlapped with decoding, in bfloat16 where native.

:func:`iter_features` decodes and resizes images in DataLoader worker processes (Pillow's JPEG draft mode for photos
much larger than the input) while the main process runs the backbone: on an x86 CPU with OpenVINO installed, compiled
by OpenVINO (:mod:`dogclf.inference.openvino`, converted while the workers decode the first batches); elsewhere in
torch under :func:`torch.inference_mode`, in channels-last memory format. Where the hardware has native bfloat16
(AVX-512 BF16 or AMX on x86 CPUs, any recent CUDA GPU) the pass runs in bfloat16. It yields float32 features batch
by batch in the order of the input, so a caller can store each finished batch. :func:`extract_features` collects
them into one matrix, with a progress bar.

The backbone is put in eval mode (and moved and converted to channels-last for the pass); its device, memory format
and train/eval modes are restored afterwards, so the caller's module is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dogclf.errors import BackboneContractError, DogclfError, UnreadableImageError
from dogclf.features.keys import ImageKey

if TYPE_CHECKING:
    from dogclf.backbones.spec import Preprocessing

__all__ = [
    "PRECISIONS",
    "ExtractOptions",
    "FeatureBatch",
    "InvalidExtractOptionsError",
    "cpu_has_native_bf16",
    "extract_features",
    "iter_feature_batches",
    "iter_features",
    "resolve_engine",
    "resolve_precision",
]

_LOG = logging.getLogger("dogclf")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ENGINES = ("auto", "torch", "openvino")


class InvalidExtractOptionsError(DogclfError, ValueError):
    """Extraction options that cannot be used (unknown precision, fp16 on a CPU, a bad batch size)."""


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """How :func:`iter_features` runs the backbone.

    Attributes:
        batch_size: Images per DataLoader batch and per yielded batch.
        forward_batch: Images per forward pass (a loader batch is split into these); ``None`` picks: on a CPU
            ``4 x torch threads`` (at least 8, at most ``batch_size``), since small batches keep a convolution's
            activations in the CPU caches and run several times faster per image; on CUDA, ``batch_size``.
        num_workers: DataLoader worker processes that decode and resize images; ``None`` picks one less than the
            CPUs, at most 4 (as :meth:`dogclf.TrainConfig.workers` does); 0 decodes in the main process.
        precision: ``"auto"`` (bfloat16 autocast on CPUs with native bfloat16 and on CUDA, else float32),
            ``"fp32"``, ``"bf16"`` (autocast; on a CPU without native bfloat16 it works but is slow) or ``"fp16"``
            (autocast, CUDA only). Features are always returned as float32.
        channels_last: Run convolutions in channels-last (NHWC) memory format, which oneDNN and cuDNN run faster.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        compile: Wrap the backbone in :func:`torch.compile`. Off by default: on a one-pass job the compile time
            (tens of seconds on a CPU) usually costs more than it saves.
        engine: The runtime of the forward passes: ``"auto"`` (OpenVINO on an x86 CPU where it is installed, else
            torch; see :func:`~dogclf.inference.openvino.resolve_engine`), ``"torch"`` or ``"openvino"``. Features
            of both agree (cosine >= 0.999 at one precision), so they share the feature cache.
    """

    batch_size: int = 64
    forward_batch: int | None = None
    num_workers: int | None = None
    precision: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    compile: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidExtractOptionsError(f"extraction batch size must be an int >= 1, got {self.batch_size!r}")
        chunk = self.forward_batch
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise InvalidExtractOptionsError(
                f"extraction forward_batch must be an int >= 1 or None (pick for the device), got {chunk!r}"
            )
        workers = self.num_workers
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise InvalidExtractOptionsError(
                f"extraction num_workers must be an int >= 0 or None (pick from the CPU count), got {workers!r}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidExtractOptionsError(
                f"unknown extraction precision {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.engine not in _ENGINES:
            raise InvalidExtractOptionsError(
                f"unknown extraction engine {self.engine!r}; use one of {', '.join(_ENGINES)}"
            )
        if not isinstance(self.device, str):
            raise InvalidExtractOptionsError(
                f"extraction device must be a string (auto, cpu, cuda, cuda:N), got {self.device!r}"
            )

    def workers(self) -> int:
        """DataLoader workers: the configured number, or one less than the CPUs (at most 4)."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, (os.cpu_count() or 1) - 1))

    def forward_size(self, device: torch.device) -> int:
        """Images per forward pass on ``device``: the configured number, or the pick described above."""
        if self.forward_batch is not None:
            return min(self.forward_batch, self.batch_size)
        if device.type == "cpu":
            return min(self.batch_size, max(8, 4 * torch.get_num_threads()))
        return self.batch_size


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 maths natively (see :func:`dogclf.hardware.cpu_has_native_bf16`)."""
    from dogclf.hardware import cpu_has_native_bf16 as native

    return native()


def resolve_precision(options: ExtractOptions, device: torch.device | None = None) -> str:
    """The precision a pass with ``options`` runs in on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Args:
        options: The extraction options; ``"auto"`` is resolved here.
        device: The device; ``None`` resolves ``options.device``.

    Raises:
        InvalidExtractOptionsError: fp16 on a CPU, or bf16 on a GPU without bfloat16.
        ValueError: An unknown or unavailable device.
    """
    if device is None:
        from dogclf.hardware import resolve_device

        device = resolve_device(options.device)
    cuda = device.type == "cuda"
    if options.precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if options.precision == "fp16" and not cuda:
        raise InvalidExtractOptionsError(
            f"extraction precision fp16 needs a CUDA device, but the device is {device}; use bf16, fp32 or auto"
        )
    if options.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InvalidExtractOptionsError(
            f"extraction precision bf16: the GPU {device} has no bfloat16 support; use fp16, fp32 or auto"
        )
    return options.precision


def resolve_engine(options: ExtractOptions, device: torch.device | None = None) -> str:
    """The runtime a pass with ``options`` runs on ``device``: ``"openvino"`` or ``"torch"``.

    ``torch.compile``, fp16 and a process default of ONNX Runtime (which runs exported models only) run in torch.

    Raises:
        InvalidExtractOptionsError: OpenVINO asked for on a GPU, or an unknown ``$DOGCLF_ENGINE``.
    """
    from dogclf.hardware import resolve_device
    from dogclf.inference.openvino import resolve_engine as resolve

    device = resolve_device(options.device) if device is None else device
    try:
        engine = resolve(options.engine, device)
    except ValueError as exc:
        raise InvalidExtractOptionsError(f"extraction {exc}") from None
    if options.compile or engine == "onnxruntime" or resolve_precision(options, device) == "fp16":
        return "torch"  # torch.compile and fp16 are torch's; ONNX Runtime serves exported models only
    return engine


@dataclass(frozen=True)
class FeatureBatch:
    """One batch of :func:`iter_feature_batches`.

    Attributes:
        positions: Indices into ``items`` of the images that decoded, in order.
        features: Their ``(len(positions), F)`` float32 CPU features.
        keys: The content key (sha256 and size) of the bytes each of them was decoded from, read in the same pass:
            what the feature cache stores them under.
        unreadable: ``(position, reason)`` of the items of this batch that could not be decoded (left out above).
    """

    positions: list[int]
    features: torch.Tensor
    keys: list[ImageKey]
    unreadable: list[tuple[int, str]]


def iter_features(
    backbone: nn.Module,
    items: Sequence[Path | str],
    preprocessing: Preprocessing,
    options: ExtractOptions = ExtractOptions(),
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Runs ``backbone`` over image files, yielding features batch by batch in the order of ``items``.

    Each item gets the eval transform of ``preprocessing`` (resize, centre crop, normalise), exactly as training and
    evaluation prepare images. Batches come in order and each position appears once, so a caller can store every
    yielded batch at once: an interruption (Ctrl-C) loses nothing already yielded.

    Args:
        backbone: Maps a normalised image batch to ``(B, F)`` features (``DogClassifierNet.backbone``). It runs in
            eval mode; its device, memory format and modes are restored when the iterator finishes or is closed.
        items: Image files.
        preprocessing: The backbone's input contract.
        options: Batch size, workers, precision, memory format, device.

    Yields:
        ``(positions, features)``: indices into ``items`` and their ``(B, F)`` float32 CPU features.

    Raises:
        UnreadableImageError: An item that cannot be decoded, named with the reason (callers normally filter them
            out first with :func:`dogclf.data.images.find_unreadable`). Batches before it have been yielded.
        InvalidExtractOptionsError: A precision the device cannot run.
        BackboneContractError: A backbone whose output is not ``(B, F)``.
    """
    paths = [Path(item) for item in items]
    for batch in iter_feature_batches(backbone, paths, preprocessing, options):
        for position, reason in batch.unreadable[:1]:
            raise UnreadableImageError(
                f"{paths[position]}: {reason}; remove the file or filter unreadable images first "
                "(dogclf.data.images.find_unreadable)"
            )
        yield batch.positions, batch.features


def iter_feature_batches(
    backbone: nn.Module,
    items: Sequence[Path | str],
    preprocessing: Preprocessing,
    options: ExtractOptions = ExtractOptions(),
    *,
    while_decoding: Callable[[], object] | None = None,
) -> Iterator[FeatureBatch]:
    """:func:`iter_features` that reports unreadable images instead of raising, and keys each image by its bytes.

    Each image file is read once, in a loader worker: its bytes are hashed (:class:`FeatureBatch` ``keys``) and
    decoded from the same buffer, so the features always belong to the content under the key even if the file
    changes during the run.

    Args:
        backbone: As for :func:`iter_features`.
        items: Image files.
        preprocessing: The backbone's input contract.
        options: Batch size, workers, precision, memory format, device.
        while_decoding: Called once the loader workers have started decoding, before the first batch is awaited:
            work for the main process (imports, set-up for what follows) that then overlaps the decoding of the
            first batches instead of adding to the run. With ``num_workers=0`` it simply runs first.

    Yields:
        One :class:`FeatureBatch` per loader batch (``options.batch_size`` items), in the order of ``items``.

    Raises:
        InvalidExtractOptionsError: A precision the device cannot run.
        BackboneContractError: A backbone whose output is not ``(B, F)``.
    """
    from dogclf.hardware import resolve_device

    device = resolve_device(options.device)
    precision = resolve_precision(options, device)
    paths = [Path(item) for item in items]
    if not paths:
        return
    loader = _loader(paths, preprocessing, options, device)
    autocast: Any = (
        torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
        if precision in _DTYPES
        else contextlib.nullcontext()
    )
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    chunk = options.forward_size(device)
    engine = resolve_engine(options, device)
    with _prepared(backbone, device, channels_last=options.channels_last and engine == "torch"):
        forward: Any = torch.compile(backbone) if options.compile else backbone
        batches = iter(loader)  # the workers start decoding (prefetch_factor batches each) now
        if engine == "openvino":  # converted (or loaded from its cache) and compiled while the workers decode
            forward = _openvino_forward(backbone, preprocessing, precision, options.engine)
        if while_decoding is not None:
            while_decoding()
        for images, positions, errors, digests, sizes in batches:
            keep = [i for i, reason in enumerate(errors) if not reason]
            if keep and len(keep) < len(errors):
                images = images[keep]
            features = _forward(forward, images, chunk, device, memory_format, autocast) if keep else None
            where = positions.tolist()
            yield FeatureBatch(
                positions=[where[i] for i in keep],
                features=features if features is not None else torch.empty(0, 0),
                keys=[ImageKey(digests[i], int(sizes[i])) for i in keep],
                unreadable=[(where[i], reason) for i, reason in enumerate(errors) if reason],
            )


def _openvino_forward(backbone: nn.Module, preprocessing: Preprocessing, precision: str, requested: str) -> Any:
    """The backbone compiled by OpenVINO; under ``auto``, the torch backbone when OpenVINO cannot convert it."""
    from dogclf.inference.openvino import OpenVinoBackbone

    compiled = OpenVinoBackbone(backbone, preprocessing.input_size, precision=precision)
    try:
        compiled.prepare()
    except Exception as exc:  # an operator OpenVINO cannot convert: torch runs it unless the user insisted
        if requested == "openvino":
            raise
        _LOG.warning("OpenVINO could not compile this backbone (%s); extracting with torch", exc)
        return backbone
    return compiled


def _forward(
    forward: Any, images: torch.Tensor, chunk: int, device: torch.device, memory_format: Any, autocast: Any
) -> torch.Tensor:
    """The ``(B, F)`` float32 CPU features of one loader batch, run in pieces of ``chunk`` images."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    with torch.inference_mode(), autocast:
        parts = [forward(part) for part in images.split(chunk)]
        output = torch.cat(parts) if len(parts) > 1 else parts[0]
    if output.ndim != 2 or output.shape[0] != images.shape[0]:
        raise BackboneContractError(
            f"the backbone returned shape {tuple(output.shape)} for {images.shape[0]} images; it must return "
            "(batch, num_features) features (a BackboneSpec.build module, e.g. DogClassifierNet.backbone)"
        )
    # A copy made outside inference mode is an ordinary tensor: a head can train on it.
    return output.to("cpu", torch.float32, copy=True)


def extract_features(
    backbone: nn.Module,
    items: Sequence[Path | str],
    preprocessing: Preprocessing,
    options: ExtractOptions = ExtractOptions(),
    progress: bool | None = None,
) -> torch.Tensor:
    """Features of every image of ``items``, as one ``(N, F)`` float32 CPU tensor in the order of ``items``.

    Args:
        backbone: Maps a normalised image batch to ``(B, F)`` features.
        items: Image files.
        preprocessing: The backbone's input contract.
        options: Batch size, workers, precision, memory format, device.
        progress: Show a progress bar with images/s; ``None`` shows it when stderr is a terminal.

    Returns:
        The features; ``(0, 0)`` when ``items`` is empty.

    Raises:
        UnreadableImageError: An item that cannot be decoded.
    """
    show = sys.stderr.isatty() if progress is None else progress
    bar: Any = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="extract features", unit="img", leave=False)
    features: torch.Tensor | None = None
    try:
        for positions, batch in iter_features(backbone, items, preprocessing, options):
            if features is None:
                features = torch.empty(len(items), batch.shape[1], dtype=torch.float32)
            features[torch.tensor(positions, dtype=torch.long)] = batch
            if bar is not None:
                bar.update(len(positions))
    finally:
        if bar is not None:
            bar.close()
    return features if features is not None else torch.empty(0, 0)


class _IndexedImages(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Items for the loader: ``(image tensor, position, "", sha256, size)``, or ``(zeros, position, reason, "", 0)``.

    Each file is read once; its bytes are hashed and decoded from the same buffer. Reporting a failure as data
    (rather than raising in a worker) lets the main process name the file instead of showing a worker traceback.
    """

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing) -> None:
        from dogclf.data.transforms import eval_transform

        self.paths = list(paths)
        self.transform = eval_transform(preprocessing)
        self.min_size = preprocessing.resize_size
        self.size = preprocessing.input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str, str, int]:
        from dogclf.data.images import load_rgb

        try:
            with open(self.paths[index], "rb") as file:
                data = file.read()
            image = self.transform(load_rgb(data, min_size=self.min_size)) if data else None
        except (UnreadableImageError, OSError) as exc:
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, UnreadableImageError) else f"{exc}"
            return torch.zeros(3, self.size, self.size), index, reason or type(exc).__name__, "", 0
        if image is None:
            return torch.zeros(3, self.size, self.size), index, "empty file (0 bytes)", "", 0
        return image, index, "", hashlib.sha256(data).hexdigest(), len(data)


def _loader(
    paths: Sequence[Path], preprocessing: Preprocessing, options: ExtractOptions, device: torch.device
) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    workers = min(options.workers(), max(1, -(-len(paths) // options.batch_size)))
    extra: dict[str, Any] = {"prefetch_factor": 4} if workers else {}
    return torch.utils.data.DataLoader(
        _IndexedImages(paths, preprocessing),
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **extra,
    )


@contextlib.contextmanager
def _prepared(backbone: nn.Module, device: torch.device, *, channels_last: bool) -> Iterator[None]:
    """Eval mode, on ``device``, channels-last if asked; restores device, memory format and modes afterwards."""
    modes = [(module, module.training) for module in backbone.modules()]
    tensors = [*backbone.parameters(), *backbone.buffers()]
    original = tensors[0].device if tensors else torch.device("cpu")
    was_channels_last = any(t.dim() == 4 and not t.is_contiguous() for t in tensors)
    backbone.eval()
    try:
        if channels_last:
            backbone.to(device, memory_format=torch.channels_last)
        else:
            backbone.to(device)
        yield
    finally:
        if was_channels_last:
            backbone.to(original)
        else:
            backbone.to(original, memory_format=torch.contiguous_format)
        for module, training in modes:
            module.training = training
