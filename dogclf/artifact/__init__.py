"""The trained-model directory: writing it, reading it back, checking it, and exporting it.

Modules: :mod:`.store` (:func:`save_model`, :func:`load_config`, :func:`read_config`, :func:`load_state`: the files
on disk), :mod:`.config` (:class:`ModelConfig`: ``config.json`` as typed records),
:mod:`.checks` (every field of ``config.json`` and the weights' shapes), :mod:`.manifest` (the digests that make a
save atomic as a whole), :mod:`.net` (:func:`build_net`: the network of a directory, weights loaded) and
:mod:`.export` (``dogclf export``: the model as one ONNX file). Names are imported lazily, so reading a
``config.json`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "CONFIG_NAME": "dogclf.artifact.store",
    "FORMAT_VERSION": "dogclf.artifact.config",
    "ModelConfig": "dogclf.artifact.config",
    "NOVELTY_NAME": "dogclf.artifact.store",
    "load_config": "dogclf.artifact.store",
    "WEIGHTS_NAME": "dogclf.artifact.store",
    "load_state": "dogclf.artifact.store",
    "model_classes": "dogclf.artifact.store",
    "read_config": "dogclf.artifact.store",
    "resolve_spec": "dogclf.artifact.store",
    "save_model": "dogclf.artifact.store",
    "build_net": "dogclf.artifact.net",
}

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "NOVELTY_NAME",
    "WEIGHTS_NAME",
    "ModelConfig",
    "build_net",
    "load_config",
    "load_state",
    "model_classes",
    "read_config",
    "resolve_spec",
    "save_model",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dogclf.artifact.config import FORMAT_VERSION, ModelConfig
    from dogclf.artifact.net import build_net
    from dogclf.artifact.store import (
        CONFIG_NAME,
        NOVELTY_NAME,
        WEIGHTS_NAME,
        load_config,
        load_state,
        model_classes,
        read_config,
        resolve_spec,
        save_model,
    )
