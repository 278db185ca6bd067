"""dogclf: turn a folder of dog photos into a served dog-breed classifier.

The public names below are imported lazily, so ``import dogclf`` is cheap and
does no work until a name is used. Messages go to the ``dogclf`` logger of Python's
``logging`` (silent unless the application configures logging; the CLI prints them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports
from dogclf._version import __version__

_EXPORTS = {
    "BackboneRegistry": "dogclf.backbones.registry",
    "BackboneSpec": "dogclf.backbones.spec",
    "Preprocessing": "dogclf.backbones.spec",
    "check_backbone": "dogclf.model.contract",
    "get_backbone": "dogclf.backbones.registry",
    "list_backbones": "dogclf.backbones.registry",
    "register_backbone": "dogclf.backbones.registry",
    "build_backbone": "dogclf.backbones.weights",
    "DogClassifierNet": "dogclf.model",
    "HeadConfig": "dogclf.model",
    "build_model": "dogclf.model",
    "load_splits": "dogclf.data.folder",
    "load_labelled": "dogclf.data.labelled",
    "LabelledFolder": "dogclf.data.labelled",
    "find_classes": "dogclf.data.folder",
    "make_synthetic_dataset": "dogclf.data.synthetic",
    "Callback": "dogclf.training.callbacks",
    "TrainConfig": "dogclf.training.config",
    "Trainer": "dogclf.training.loop",
    "train": "dogclf.pipeline.run",
    "TrainResult": "dogclf.pipeline.run",
    "save_model": "dogclf.artifact",
    "Classifier": "dogclf.classifier",
    "Prediction": "dogclf.classifier",
    "load_model": "dogclf.classifier",
    "evaluate": "dogclf.evaluation",
    "EvalReport": "dogclf.evaluation",
    "plot_confusion_matrix": "dogclf.evaluation",
    "plot_reliability": "dogclf.evaluation",
}

__all__ = [
    "__version__",
    "BackboneRegistry",
    "BackboneSpec",
    "Callback",
    "Classifier",
    "DogClassifierNet",
    "EvalReport",
    "HeadConfig",
    "LabelledFolder",
    "Prediction",
    "Preprocessing",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_backbone",
    "build_model",
    "check_backbone",
    "evaluate",
    "find_classes",
    "get_backbone",
    "list_backbones",
    "load_labelled",
    "load_model",
    "load_splits",
    "make_synthetic_dataset",
    "plot_confusion_matrix",
    "plot_reliability",
    "register_backbone",
    "save_model",
    "train",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

# dogclf logs to the "dogclf" logger hierarchy; what is shown is the application's choice (docs/logging.md).
logging.getLogger("dogclf").addHandler(logging.NullHandler())


if TYPE_CHECKING:
    from dogclf.artifact import save_model
    from dogclf.backbones.registry import BackboneRegistry, get_backbone, list_backbones, register_backbone
    from dogclf.backbones.spec import BackboneSpec, Preprocessing
    from dogclf.backbones.weights import build_backbone
    from dogclf.classifier import Classifier, Prediction, load_model
    from dogclf.data.folder import find_classes, load_splits
    from dogclf.data.labelled import LabelledFolder, load_labelled
    from dogclf.data.synthetic import make_synthetic_dataset
    from dogclf.evaluation import EvalReport, evaluate, plot_confusion_matrix, plot_reliability
    from dogclf.model import DogClassifierNet, HeadConfig, build_model
    from dogclf.model.contract import check_backbone
    from dogclf.pipeline.run import TrainResult, train
    from dogclf.training.callbacks import Callback
    from dogclf.training.config import TrainConfig
    from dogclf.training.loop import Trainer
