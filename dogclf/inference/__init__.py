"""Inference: the engine every entry point runs, its post-processing, threads, precision and runtimes.

Modules: :mod:`.engine` (the batched forward pass), :mod:`.preprocess` (decoding and normalising images),
:mod:`.postprocess` (scores, unknown flag, top-k), :mod:`.novelty` (the feature-space novelty score),
:mod:`.results` (the answers), :mod:`.threads` (the decode/forward thread budget), :mod:`.precision` (which
precision runs, and why) and :mod:`.openvino` (the backbone compiled by OpenVINO). Exporting a model directory is
:mod:`dogclf.artifact.export`; the ONNX Runtime engine is :mod:`dogclf.classifier.runtimes`.
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
