"""Inference: the engine every entry point runs, its post-processing, threads, precision and export.

Modules: :mod:`.engine` (the batched forward pass), :mod:`.postprocess` (scores, unknown flag, top-k),
:mod:`.threads` (the decode/forward thread budget), :mod:`.precision` (which precision runs, and why),
:mod:`.export` (ONNX and TorchScript files) and :mod:`.runtimes` (ONNX Runtime and OpenVINO engines).
Names are imported lazily, so ``import dogclf.inference`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "Engine": "dogclf.inference.engine",
    "EngineBatch": "dogclf.inference.engine",
    "EngineOutput": "dogclf.inference.engine",
    "TorchEngine": "dogclf.inference.engine",
    "ImageResult": "dogclf.inference.results",
    "Prediction": "dogclf.inference.results",
    "PostProcessor": "dogclf.inference.postprocess",
    "Scores": "dogclf.inference.postprocess",
    "PrecisionChoice": "dogclf.inference.precision",
    "choose_precision": "dogclf.inference.precision",
    "ThreadBudget": "dogclf.inference.threads",
}

__all__ = [
    "Engine",
    "EngineBatch",
    "EngineOutput",
    "ImageResult",
    "PostProcessor",
    "Prediction",
    "PrecisionChoice",
    "Scores",
    "ThreadBudget",
    "TorchEngine",
    "choose_precision",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.inference.engine import Engine, EngineBatch, EngineOutput, TorchEngine
    from dogclf.inference.postprocess import PostProcessor, Scores
    from dogclf.inference.precision import PrecisionChoice, choose_precision
    from dogclf.inference.results import ImageResult, Prediction
    from dogclf.inference.threads import ThreadBudget
