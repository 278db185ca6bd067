"""The backbone compiled by OpenVINO for the CPU: the fastest forward pass dogclf has on x86 CPUs.

Every forward pass (feature extraction for training and tuning, evaluate, predict, serve, the SageMaker handlers,
calibration and novelty) runs the frozen backbone; on an x86 CPU with OpenVINO installed that backbone is converted
once to OpenVINO's format and compiled for the CPU (bfloat16 where the CPU has native bfloat16, else float32), and the
head stays a float32 torch layer on float32 features, exactly as it is trained and calibrated. Measured on efficientnet
_lite0 features: cosine >= 0.9999 against torch in float32, so features from either engine share the feature cache.

Conversion traces the module (seconds to tens of seconds), so the converted model is kept in a cache folder
(``$DOGCLF_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/dogclf/openvino``, else ``~/.cache/dogclf/openvino``) under the
digest of the backbone's exact tensors, the input size and the OpenVINO and torch versions; the next run of any
command on the same backbone loads it in a fraction of a second. An unwritable cache only costs the conversion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dogclf._extras import require
from dogclf.errors import BackboneContractError
from dogclf.hardware import ENGINE_SWITCH, openvino_usable
from dogclf.inference.engine import TorchEngine
from dogclf.inference.threads import ThreadBudget

__all__ = ["ENGINES", "OpenVinoBackbone", "OpenVinoEngine", "default_ir_cache", "resolve_engine"]

ENGINES = ("auto", "torch", "openvino", "onnxruntime")
_FORMAT = "1"  # bump when the saved model's inputs or outputs change
_HINTS = ("LATENCY", "THROUGHPUT")  # a lone image runs on every thread; a batch is spread over the streams


def default_ir_cache(environ: Mapping[str, str] = os.environ) -> Path:
    """Where converted backbones are kept (see the module docstring)."""
    from dogclf._cachedir import user_cache_dir

    return user_cache_dir(environ, "DOGCLF_OPENVINO_CACHE", "openvino")


def resolve_engine(
    requested: str | None, device: torch.device | str = "cpu", environ: Mapping[str, str] = os.environ
) -> str:
    """The runtime that runs the backbone: ``"openvino"``, ``"torch"`` or ``"onnxruntime"``.

    ``None`` or ``"auto"`` takes ``$DOGCLF_ENGINE`` if set, else OpenVINO on an x86 CPU where it is installed, and
    torch elsewhere (CUDA, ARM, or no OpenVINO).

    Raises:
        ValueError: An unknown engine name, or OpenVINO asked for on a device other than the CPU.
    """
    device = torch.device(device)
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = environ.get(ENGINE_SWITCH, "").strip().lower() or "auto"
        if name == "auto":
            return "openvino" if device.type == "cpu" and openvino_usable() else "torch"
        if name in ("openvino", "onnxruntime") and device.type != "cpu":
            return "torch"  # a process-wide default never forces a GPU run onto the CPU
    if name not in ENGINES[1:]:
        source = f"{ENGINE_SWITCH}={name}" if requested in (None, "auto") else repr(name)
        raise ValueError(f"unknown engine {source}; use {', '.join(ENGINES)}")
    if name in ("openvino", "onnxruntime") and device.type != "cpu":
        raise ValueError(f"engine {name} runs on the CPU, but the device is {device}; use --engine torch or auto")
    return name


@functools.cache
def _core() -> Any:
    """The process's one OpenVINO ``Core``, kept for the life of the process.

    OpenVINO's CPU plugin points the compiling thread's signal stack (``sigaltstack``) at memory it owns; a ``Core``
    per model that was later freed unloaded the plugin and left that stack dangling, and the next signal with a Python
    handler (SIGCHLD of a finished subprocess) killed the process with SIGSEGV. One ``Core`` keeps the plugin loaded.
    """
    import openvino

    return openvino.Core()


def _cache_key(digest: str, input_size: int, ov_version: str) -> str:
    parts = (_FORMAT, digest, str(input_size), ov_version, torch.__version__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class OpenVinoBackbone:
    """A frozen backbone compiled by OpenVINO: normalised ``(N, 3, S, S)`` float32 images -> ``(N, F)`` features.

    The module is converted on first use (or read from the cache) and compiled for the CPU twice: with OpenVINO's
    latency hint for a few images, with its throughput hint for batches, which are spread over its streams. Each
    calling thread gets its own infer requests.

    Args:
        backbone: The frozen backbone (not changed; it is traced in eval mode).
        input_size: The square input size it was trained at.
        precision: ``"bf16"`` (OpenVINO's bfloat16 inference) or ``"fp32"``.
        cache_dir: Where converted models are kept; ``None``: :func:`default_ir_cache`.
        digest: The backbone's :func:`~dogclf.backbones.weights.backbone_digest` if already known.
    """

    def __init__(
        self,
        backbone: nn.Module,
        input_size: int,
        *,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        digest: str | None = None,
    ) -> None:
        self._ov = require("openvino", extra="openvino", purpose="the OpenVINO engine")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the OpenVINO engine runs fp32 or bf16, not {precision!r}")
        self.backbone = backbone
        self.input_size = input_size
        self.precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_ir_cache()
        self._digest = digest
        self._model: Any = None
        self._compiled: dict[str, Any] = {}
        self._threads: int | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self.loaded_from_cache: bool | None = None

    def configure(self, *, threads: int) -> None:
        """Runs on ``threads`` threads in all (recompiled on the next call).

        OpenVINO splits the threads into its streams itself (one single-threaded stream per core on a small CPU).
        """
        with self._lock:
            if threads != self._threads:
                self._threads = threads
                self._compiled = {}

    def prepare(self) -> None:
        """Converts (or loads) and compiles now, so the first batch does not pay for it."""
        for hint in _HINTS:
            self._requests(hint)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a normalised float batch, as float32 (on the CPU).

        A few images run as one request on every thread (the soonest answer for a lone request); a larger batch is
        split across the streams of the model compiled for throughput (one request each, run side by side): on a
        2-core CPU one single-threaded stream per core ran a batch of 16 1.08x (bf16) to 1.32x (fp32, AVX2) faster
        than one stream with both threads, whose threads wait on each other after every layer.
        """
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).contiguous().numpy())
        requests = self._requests("THROUGHPUT")
        if len(array) < 2 * len(requests):
            # share_inputs: the request reads ``array`` in place. Copying into the request's own input tensor
            # (reshaped to each batch's size) deadlocked now and then with two Python threads each running a request.
            result = self._requests("LATENCY")[0].infer({0: array}, share_inputs=True)
            return torch.from_numpy(np.array(result[0], dtype=np.float32, copy=True))
        parts = np.array_split(array, len(requests))
        for request, part in zip(requests, parts, strict=True):
            request.start_async({0: part}, share_inputs=True)
        for request in requests:
            request.wait()
        outputs = [request.get_output_tensor(0).data for request in requests]
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32, copy=False))

    def _requests(self, hint: str) -> list[Any]:
        """This thread's infer requests of the model compiled with ``hint``: one per stream."""
        with self._lock:
            if hint not in self._compiled:
                self._compiled[hint] = self._compile(hint)
            compiled = self._compiled[hint]
        mine = self._local.__dict__.setdefault("requests", {})
        requests, made_for = mine.get(hint, (None, None))
        if requests is None or made_for is not compiled:
            count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            requests = [compiled.create_infer_request() for _ in range(count)]
            mine[hint] = (requests, compiled)
        return requests

    def _compile(self, hint: str) -> Any:
        """The model compiled for the CPU with OpenVINO's ``LATENCY`` or ``THROUGHPUT`` hint.

        With ``THROUGHPUT`` OpenVINO picks the streams for this CPU (one single-threaded stream per core on 2 cores);
        the thread count is the caller's budget where it set one.
        """
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32", "PERFORMANCE_HINT": hint}
        if self._threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(self._threads)
        return _core().compile_model(self._converted(), "CPU", config)

    def _converted(self) -> Any:
        if self._model is None:
            key = _cache_key(self._backbone_digest(), self.input_size, self._ov.get_version())
            folder = self.cache_dir / key
            self.loaded_from_cache = (folder / "backbone.xml").is_file()
            if self.loaded_from_cache:
                with contextlib.suppress(Exception):  # a damaged entry is converted again below
                    self._model = _core().read_model(os.fspath(folder / "backbone.xml"))
                    return self._model
                self.loaded_from_cache = False
            self._model = self._convert()
            self._save(folder)
        return self._model

    def _backbone_digest(self) -> str:
        if self._digest is None:
            from dogclf.backbones.weights import backbone_digest

            self._digest = backbone_digest(self.backbone)
        return self._digest

    def _convert(self) -> Any:
        size = self.input_size
        modes = [(module, module.training) for module in self.backbone.modules()]
        self.backbone.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # OpenVINO's PyTorch frontend traces with torch.jit.trace, which torch 2.13 marks deprecated; the
                # trace is what it converts (torch.export is ~2x slower to convert here).
                warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=Warning)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                return self._ov.convert_model(
                    self.backbone, example_input=torch.zeros(1, 3, size, size), input=[(-1, 3, size, size)]
                )
        finally:
            for module, training in modes:
                module.training = training

    def _save(self, folder: Path) -> None:
        """Writes the converted model into the cache atomically; a cache that cannot be written is skipped."""
        with contextlib.suppress(OSError):
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache from other users
            try:
                self._ov.save_model(self._model, os.fspath(staging / "backbone.xml"), compress_to_fp16=False)
                os.replace(staging, folder)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)


class OpenVinoEngine(TorchEngine):
    """The inference engine with the backbone run by OpenVINO (:class:`OpenVinoBackbone`) and the head by torch.

    Preparation, batching, streaming and post-processing are the torch engine's; only the backbone's forward pass
    differs: one forward worker whose batches OpenVINO spreads over its streams.

    Args:
        net: A module with ``backbone`` and ``head`` submodules (on the CPU).
        preprocessing: The backbone's input contract.
        precision: ``"fp32"`` or ``"bf16"``.
        forward_batch: Most images per forward pass (default 8).
        cache_dir: Where converted backbones are kept (default :func:`default_ir_cache`).
    """

    name = "openvino"

    def __init__(
        self,
        net: nn.Module,
        preprocessing: Any,
        *,
        precision: str = "fp32",
        forward_batch: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"the OpenVINO engine runs fp32 or bf16, not {precision!r}")
        super().__init__(
            net, preprocessing, device="cpu", precision=precision, forward_batch=forward_batch, channels_last=False
        )
        self.compiled = OpenVinoBackbone(
            self.backbone, preprocessing.input_size, precision=precision, cache_dir=cache_dir
        )

    def fit_budget(self, budget: ThreadBudget) -> ThreadBudget:
        """One forward worker with all the forward threads: OpenVINO spreads one request over its threads itself.

        Two Python threads each running their own OpenVINO request deadlocked now and then on a loaded machine (1 run
        of ``dogclf predict`` in 16 to 24 hung inside ``InferRequest.infer``); one worker never did.
        """
        threads = budget.forward_workers * budget.forward_threads
        return dataclasses.replace(budget, forward_workers=1, forward_threads=threads)

    def use_threads(self, budget: ThreadBudget) -> None:
        """OpenVINO runs on the forward threads of the budget, in the streams it picks for them."""
        self.compiled.configure(threads=budget.forward_workers * budget.forward_threads)

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        output = self.compiled(self.normalise(chunk))
        if output.ndim != 2 or output.shape[0] != chunk.shape[0]:
            raise BackboneContractError(
                f"the backbone returned shape {tuple(output.shape)} for {chunk.shape[0]} images; it must return "
                "(batch, num_features) features"
            )
        return output
