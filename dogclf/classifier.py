"""A loaded, trained model that predicts breeds: ``load_model(DIR).predict(images)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dogclf.artifact import load_state, read_config, resolve_spec
from dogclf.artifact_checks import check_state
from dogclf.backbones.spec import BackboneSpec
from dogclf.data.images import load_rgb
from dogclf.data.transforms import eval_transform
from dogclf.model import DogClassifierNet, HeadConfig, build_head
from dogclf.novelty import NoveltyScorer, load_novelty
from dogclf.training.config import resolve_device

__all__ = ["Classifier", "ImageResult", "Prediction", "load_model"]

ImageInput = str | os.PathLike[str] | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One ranked answer: class index, display name and probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"label", "score", "index"}``."""
        return {"label": self.label, "score": self.score, "index": self.index}


@dataclass(frozen=True)
class ImageResult:
    """The answer for one image: ranked breeds, and whether it looks like none of them.

    Attributes:
        predictions: The top-k breeds, best first (calibrated scores).
        unknown: True when the image looks like none of the known breeds: its backbone features are far from
            all of them (models with a novelty score), or else its top score is under the unknown threshold.
    """

    predictions: list[Prediction]
    unknown: bool

    def to_dict(self) -> dict[str, Any]:
        """Returns ``{"predictions": [{"label", "score", "index"}, ...], "unknown": bool}``."""
        return {"predictions": [p.to_dict() for p in self.predictions], "unknown": self.unknown}


def _calibration(config: dict[str, Any]) -> tuple[float, float | None]:
    """Temperature and unknown threshold recorded in a config (1.0 and None for models trained before them)."""
    calibration = config.get("calibration") or {}
    temperature = float(calibration.get("temperature", 1.0))
    threshold = calibration.get("unknown_threshold")
    return temperature, None if threshold is None else float(threshold)


class Classifier:
    """A trained model with its class names and preprocessing.

    Args:
        net: The network.
        spec: Its backbone spec (preprocessing included).
        class_names: Display names in index order.
        config: The model directory's config.
        device: Where the network runs.
        precision: ``"fp32"`` (default: exact), ``"bf16"``, ``"fp16"`` (CUDA) or ``"auto"`` (bf16 autocast with
            channels-last on CPUs with native bfloat16 and on CUDA, as feature extraction does; several times faster
            on such CPUs, scores differ from fp32 in about the third decimal).
        novelty: The feature-space novelty score (:mod:`dogclf.novelty`); ``None``: the softmax threshold decides.
    """

    def __init__(
        self,
        net: DogClassifierNet,
        *,
        spec: BackboneSpec,
        class_names: Sequence[str],
        config: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        novelty: NoveltyScorer | None = None,
    ) -> None:
        from dogclf.features.extract import ExtractOptions, resolve_precision

        self.device = torch.device(device)
        self.precision = resolve_precision(ExtractOptions(precision=precision), self.device)
        self.net = net.to(self.device).eval()
        if self.precision != "fp32":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.spec = spec
        self.class_names = list(class_names)
        self.config = config or {}
        self.transform = eval_transform(spec.preprocessing)
        self.temperature, self.unknown_threshold = _calibration(self.config)
        self.novelty = novelty

    @property
    def classes(self) -> list[Any]:
        """The classes (``ClassInfo``: folder id and display name) in output order, e.g. for ``load_labelled``."""
        from dogclf.artifact import model_classes

        return model_classes({"class_names": self.class_names, **self.config})

    @property
    def preprocessing(self) -> Any:
        """The input contract of the backbone."""
        return self.spec.preprocessing

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decodes and transforms images into one batch tensor."""
        size = self.spec.preprocessing.resize_size
        return torch.stack([self.transform(load_rgb(image, min_size=size)) for image in images])

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(N, C)`` (float32, on the CPU) of a preprocessed batch, in this classifier's precision."""
        return self.scores(batch)[0]

    @torch.inference_mode()
    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(N, C)`` and novelty scores ``(N,)`` (``None`` without a novelty score) of a preprocessed batch.

        One forward pass: the backbone's features go to the head and to the novelty score.
        """
        if self.precision == "fp32":
            logits, features = self._forward(batch.to(self.device))
        else:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            # Small forward batches are several times faster per image on CPUs (see docs/features.md).
            step = 8 if self.device.type == "cpu" else len(batch) or 1
            parts = []
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                for start in range(0, len(batch), step):
                    x = batch[start : start + step].to(self.device).contiguous(memory_format=torch.channels_last)
                    parts.append(self._forward(x))
            if not parts:
                return torch.empty(0, len(self.class_names)), None if self.novelty is None else torch.empty(0)
            logits = torch.cat([p[0] for p in parts])
            features = None if self.novelty is None else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        return logits, None if self.novelty is None or features is None else self.novelty.score(features)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the backbone features when the novelty score needs them (else the plain forward pass)."""
        if self.novelty is None:
            return self.net(x).float().cpu(), None
        features = self.net.features(x)
        return self.net.head(features).float().cpu(), features.float().cpu()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(N, C)`` of a preprocessed batch (softmax of logits / temperature)."""
        return torch.softmax(self.logits(batch) / self.temperature, dim=1)

    def is_unknown(self, top_score: float, novelty_score: float | None = None) -> bool:
        """Whether an image looks like none of the known breeds.

        With a novelty score (:mod:`dogclf.novelty`) and the image's ``novelty_score``, that decides: the features
        are farther from every known breed than the threshold fitted on validation photos. Otherwise the top score
        is under the unknown threshold (never, for models without one).
        """
        if self.novelty is not None and novelty_score is not None and self.novelty.threshold is not None:
            return novelty_score > self.novelty.threshold
        return self.unknown_threshold is not None and top_score < self.unknown_threshold

    def rank(self, probs: torch.Tensor, *, top_k: int = 5, novelty: torch.Tensor | None = None) -> list[ImageResult]:
        """Turns probabilities ``(N, C)`` and novelty scores ``(N,)`` (:meth:`scores`) into :class:`ImageResult` s."""
        k = min(top_k, len(self.class_names))
        scores, indices = probs.topk(k, dim=1)
        novel = [None] * len(probs) if novelty is None else novelty.tolist()
        results = []
        for row_s, row_i, score in zip(scores.tolist(), indices.tolist(), novel, strict=True):
            predictions = [Prediction(i, self.class_names[i], s) for s, i in zip(row_s, row_i, strict=True)]
            results.append(ImageResult(predictions, self.is_unknown(row_s[0], score)))
        return results

    def results(self, batch: torch.Tensor, *, top_k: int = 5) -> list[ImageResult]:
        """The :class:`ImageResult` of each image of a preprocessed batch.

        One forward pass: calibrated scores, and the unknown decision (the novelty score where the model has one).
        """
        logits, novelty = self.scores(batch)
        return self.rank(torch.softmax(logits / self.temperature, dim=1), top_k=top_k, novelty=novelty)

    def classify(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[ImageResult]:
        """Like :meth:`predict`, but each answer also says whether the image looks like an unknown breed."""
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            images = [images]
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        images = list(images)
        results: list[ImageResult] = []
        for start in range(0, len(images), batch_size):
            results += self.results(self.preprocess(images[start : start + batch_size]), top_k=top_k)
        return results

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction]]:
        """Ranks the classes of each image.

        Args:
            images: One image or a list of them: paths, bytes or PIL images.
            top_k: How many classes to return per image (capped at the class count).
            batch_size: Images per forward pass.

        Returns:
            For each image, the ``top_k`` best predictions, best first.
        """
        return [r.predictions for r in self.classify(images, top_k=top_k, batch_size=batch_size)]


def load_model(model_dir: str | os.PathLike[str], *, device: str = "cpu", precision: str = "fp32") -> Classifier:
    """Loads a model directory written by ``dogclf train`` (no network, no pickle).

    Args:
        model_dir: The directory holding ``model.safetensors`` and ``config.json``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (see :class:`Classifier`).

    Returns:
        A ready :class:`Classifier`.

    Raises:
        ModelDirError: Missing or mismatched files, or an uninstalled backbone.
    """
    root = Path(model_dir)
    config = read_config(root)
    spec = resolve_spec(config, root)
    head_config = HeadConfig(**config["head"])
    net = DogClassifierNet(
        spec.build(pretrained=False, progress=False),
        build_head(spec.num_features, len(config["class_names"]), head_config),
        frozen=True,
    )
    state = load_state(root)
    check_state(net, state, root, backbone=spec.name)
    net.load_state_dict(state)
    return Classifier(
        net,
        spec=spec,
        class_names=config["class_names"],
        config=config,
        device=resolve_device(device),
        precision=precision,
        novelty=load_novelty(root, config),
    )
