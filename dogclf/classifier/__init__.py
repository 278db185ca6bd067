"""A trained model ready to predict: ``load_model(DIR).predict(images)``.

Modules: :mod:`.classifier` (:class:`Classifier` and :func:`load_model`) and :mod:`.runtimes` (the ONNX Runtime
engine ``load_model(DIR, engine="onnxruntime")`` runs).
"""

from dogclf.classifier.classifier import Classifier, ImageResult, Prediction, load_model

__all__ = ["Classifier", "ImageResult", "Prediction", "load_model"]
