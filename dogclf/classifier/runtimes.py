"""Engines other than eager torch, behind the torch engine's interface: ONNX Runtime and OpenVINO.

The same :class:`~dogclf.inference.engine.Engine` preparation and post-processing apply, and the engines return
logits and features too.

``load_model(DIR, engine="onnxruntime")`` uses ``DIR/model.onnx`` when ``dogclf export`` wrote one for these exact
weights, and otherwise exports the model to a temporary file first (tens of seconds on a CPU). OpenVINO runs the
backbone converted directly from torch (:mod:`dogclf.inference.openvino`), cached across runs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dogclf._extras import require
from dogclf.artifact.config import ModelConfig
from dogclf.inference.engine import Engine, EngineOutput
from dogclf.inference.preprocess import Normaliser, stack
from dogclf.inference.threads import ThreadBudget

__all__ = ["RUNTIMES", "OnnxRuntimeEngine", "fresh_export", "runtime_engine"]

RUNTIMES = ("onnxruntime", "openvino")


class _OnnxEngine(Engine):
    """What both exported-model engines share: normalising on the CPU and the ``(logits, features)`` outputs."""

    def __init__(self, path: Path, preprocessing: Any, *, precision: str, forward_batch: int | None) -> None:
        super().__init__(preprocessing, device=torch.device("cpu"), precision=precision, forward_batch=forward_batch)
        self.path = path
        self.normalise = Normaliser(preprocessing, torch.device("cpu"))
        self.budget: ThreadBudget | None = None

    def use_threads(self, budget: ThreadBudget) -> None:
        """Sizes the runtime's threads (it builds its session on first use, or again when the budget changes)."""
        if budget != self.budget:
            self.budget = budget
            self._reset()

    def _reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: torch.Tensor | Sequence[np.ndarray]) -> EngineOutput:
        """Logits and features of a batch (see :meth:`Engine.forward`), in :attr:`forward_batch` chunks."""
        if not isinstance(batch, torch.Tensor):
            batch = stack(batch)
        logits, features = [], []
        for chunk in batch.split(self.forward_batch):
            images = np.ascontiguousarray(self.normalise(chunk).numpy())
            chunk_logits, chunk_features = self._run(images)
            logits.append(torch.from_numpy(np.asarray(chunk_logits, dtype=np.float32)))
            features.append(torch.from_numpy(np.asarray(chunk_features, dtype=np.float32)))
        return EngineOutput.cat([EngineOutput(lo, fe) for lo, fe in zip(logits, features, strict=True)])


class OnnxRuntimeEngine(_OnnxEngine):
    """An exported model run by ONNX Runtime's CPU execution provider (float32).

    Args:
        path: The ONNX file (from :func:`~dogclf.artifact.export.export_onnx`).
        preprocessing: The backbone's input contract.
        forward_batch: Most images per run (default 8).
    """

    name = "onnxruntime"

    def __init__(self, path: Path, preprocessing: Any, *, forward_batch: int | None = None) -> None:
        self._ort = require("onnxruntime", extra="onnx", purpose="--engine onnxruntime")
        super().__init__(path, preprocessing, precision="fp32", forward_batch=forward_batch)
        self._session: Any = None
        self._lock = threading.Lock()

    def _reset(self) -> None:
        self._session = None

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._session is None:
                options = self._ort.SessionOptions()
                if self.budget is not None:  # each forward worker's run uses its own share of the cores
                    options.intra_op_num_threads = self.budget.forward_threads
                    options.inter_op_num_threads = 1
                self._session = self._ort.InferenceSession(
                    os.fspath(self.path), options, providers=["CPUExecutionProvider"]
                )
            session = self._session
        logits, features = session.run(["logits", "features"], {"images": images})
        return logits, features


def fresh_export(model_dir: str | os.PathLike[str]) -> Path | None:
    """``model_dir/model.onnx`` if ``dogclf export`` wrote it from the directory's current weights, else ``None``."""
    from dogclf.artifact.export import onnx_metadata, weights_digest

    path = Path(model_dir) / "model.onnx"
    if path.is_file() and onnx_metadata(path).get("dogclf_weights_sha256") == weights_digest(model_dir):
        return path
    return None


def _onnx_file(net: nn.Module, preprocessing: Any, model_dir: Path | None, config: ModelConfig | None) -> Path:
    """:func:`fresh_export` when there is one; otherwise a new export in a temp file."""
    from dogclf.artifact.export import _metadata, export_onnx, weights_digest

    existing = fresh_export(model_dir) if model_dir is not None else None
    if existing is not None:
        return existing
    digest = weights_digest(model_dir) if model_dir is not None else ""
    folder = Path(tempfile.mkdtemp(prefix="dogclf-onnx-"))
    path = folder / "model.onnx"
    export_onnx(net, preprocessing, path, metadata=_metadata(config, digest))
    return path


def runtime_engine(
    name: str,
    net: nn.Module,
    preprocessing: Any,
    *,
    precision: str,
    forward_batch: int | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    config: ModelConfig | None = None,
) -> Engine:
    """An ONNX Runtime or OpenVINO engine for ``net`` (exported from it, or from ``model_dir/model.onnx``).

    Raises:
        ValueError: An unknown engine name.
        MissingExtraError: The runtime (or the ONNX exporter) is not installed.
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown engine {name!r}; use torch, {', '.join(RUNTIMES)}")
    if name == "openvino":
        from dogclf.inference.openvino import OpenVinoEngine

        return OpenVinoEngine(net, preprocessing, precision=precision, forward_batch=forward_batch)
    require(name, extra="onnx", purpose=f"--engine {name}")  # fail before a long export
    path = _onnx_file(net, preprocessing, None if model_dir is None else Path(model_dir), config)
    return OnnxRuntimeEngine(path, preprocessing, forward_batch=forward_batch)
