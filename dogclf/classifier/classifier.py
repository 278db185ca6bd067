"""A loaded, trained model that predicts breeds: ``load_model(DIR).predict(images)``.

A :class:`Classifier` is a model directory made ready for inference: its network inside an
:class:`~dogclf.inference.engine.Engine` (batched, channels-last, in the precision the model was calibrated in) and
its :class:`~dogclf.inference.postprocess.PostProcessor` (temperature, unknown decision, top-k). ``predict``,
``evaluate``, ``serve`` and the SageMaker handlers all use these two, so they give the same answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dogclf.artifact.config import ModelConfig
from dogclf.artifact.net import build_net
from dogclf.artifact.store import load_config, resolve_spec
from dogclf.backbones.spec import BackboneSpec
from dogclf.hardware import resolve_device
from dogclf.inference.engine import Engine, EngineOutput, TorchEngine
from dogclf.inference.novelty import NoveltyScorer, load_novelty
from dogclf.inference.postprocess import PostProcessor, Scores
from dogclf.inference.precision import PrecisionChoice, choose_precision
from dogclf.inference.results import ImageResult, Prediction
from dogclf.inference.threads import ThreadBudget
from dogclf.model import DogClassifierNet

__all__ = ["Classifier", "ImageResult", "Prediction", "load_model"]

ImageInput = str | os.PathLike[str] | bytes | Image.Image
_LOG = logging.getLogger("dogclf")


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")


class Classifier:
    """A trained model with its class names, preprocessing, engine and post-processing.

    Args:
        net: The network.
        spec: Its backbone spec (preprocessing included).
        class_names: Display names in index order.
        config: The model directory's config (calibration and its precision), or a dict of part of one.
        device: Where the network runs.
        precision: ``None`` (default): the precision the model was calibrated in (``config.json``); or ``"fp32"``,
            ``"bf16"``, ``"fp16"`` (CUDA), ``"auto"`` (bf16 on CPUs with native bfloat16 and on CUDA, else fp32).
        engine: Another engine for the same model (for example an ONNX Runtime one); default: the torch engine.
        forward_batch: Most images per forward pass (default: 8 on a CPU, 64 on CUDA).
        novelty: The feature-space novelty score (:mod:`dogclf.inference.novelty`); ``None``: the softmax threshold
            decides.
    """

    def __init__(
        self,
        net: DogClassifierNet,
        *,
        spec: BackboneSpec,
        class_names: Sequence[str],
        config: ModelConfig | Mapping[str, Any] | None = None,
        device: torch.device | str = "cpu",
        precision: str | None = None,
        engine: Engine | None = None,
        forward_batch: int | None = None,
        novelty: NoveltyScorer | None = None,
    ) -> None:
        self.model_config: ModelConfig | None = config if isinstance(config, ModelConfig) else None
        self._config: ModelConfig | Mapping[str, Any] = config or {}
        self.spec = spec
        self.class_names = list(class_names)
        device = torch.device(device)
        self.precision_choice: PrecisionChoice = choose_precision(precision, self._config, device)
        self.engine: Engine = engine or TorchEngine(
            net,
            spec.preprocessing,
            device=device,
            precision=self.precision_choice.precision,
            forward_batch=forward_batch,
        )
        if engine is not None:
            self.precision_choice = PrecisionChoice(engine.precision, f"{engine.name} engine")
        self.net = net
        self.post = PostProcessor.from_config(self._config, self.class_names, novelty=novelty)

    @property
    def config(self) -> dict[str, Any]:
        """The model directory's ``config.json`` as a dict (:attr:`model_config` holds it typed)."""
        if self.model_config is not None:
            return self.model_config.to_dict()
        return dict(self._config)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        """Where the forward pass runs."""
        return self.engine.device

    @property
    def precision(self) -> str:
        """The precision the forward pass runs in: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self.engine.precision

    @property
    def novelty(self) -> NoveltyScorer | None:
        """The feature-space novelty score (:mod:`dogclf.inference.novelty`), or ``None`` (softmax threshold only)."""
        return self.post.novelty

    @property
    def classes(self) -> list[Any]:
        """The classes (``ClassInfo``: folder id and display name) in output order, e.g. for ``load_labelled``."""
        from dogclf.artifact import model_classes

        return model_classes(self.model_config or {**self._config, "class_names": self.class_names})

    @property
    def preprocessing(self) -> Any:
        """The input contract of the backbone."""
        return self.spec.preprocessing

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0 for uncalibrated models)."""
        return self.post.temperature

    @property
    def unknown_threshold(self) -> float | None:
        """The top-score threshold under which an image is unknown (``None``: none)."""
        return self.post.unknown_threshold

    @property
    def transform(self) -> Any:
        """The eval transform as one callable (PIL image -> normalised tensor), for code that wants torchvision's."""
        from dogclf.data.transforms import eval_transform

        return eval_transform(self.spec.preprocessing)

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decodes and transforms images into one normalised ``(N, 3, H, W)`` float batch."""
        from dogclf.inference.preprocess import Normaliser, stack

        arrays = [self.engine.prepare(image) for image in images]
        return Normaliser(self.preprocessing, torch.device("cpu"))(stack(arrays)).contiguous()

    def forward(self, batch: torch.Tensor | Sequence[Any]) -> EngineOutput:
        """Logits and backbone features of a batch (prepared uint8 images, or a normalised float tensor)."""
        return self.engine.forward(batch)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(N, C)`` (float32, on the CPU) of a batch, in this classifier's precision."""
        return self.engine.forward(batch).logits

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(N, C)`` of a batch (softmax of logits / temperature)."""
        return self.post.probabilities(self.logits(batch))

    def scores(self, output: EngineOutput | torch.Tensor | Sequence[Any]) -> Scores:
        """Calibrated probabilities, novelty scores and unknown flags (:meth:`PostProcessor.scores`).

        Args:
            output: An engine output, or a batch to run through the engine first (see :meth:`forward`).
        """
        if not isinstance(output, EngineOutput):
            output = self.engine.forward(output)
        return self.post.scores(output)

    def is_unknown(self, top_score: float, novelty_score: float | None = None) -> bool:
        """Whether an image looks like none of the known breeds (:meth:`PostProcessor.unknown`).

        With a novelty score and the image's ``novelty_score``, that decides; otherwise the top score is under the
        unknown threshold (never, for models without one).
        """
        novelty = None if novelty_score is None else torch.tensor([novelty_score])
        return bool(self.post.unknown(torch.tensor([[top_score]]), novelty)[0])

    def rank(self, probs: torch.Tensor, *, top_k: int = 5, novelty: torch.Tensor | None = None) -> list[ImageResult]:
        """Turns calibrated probabilities ``(N, C)`` and novelty scores ``(N,)`` into one :class:`ImageResult` each.

        Without novelty scores the unknown decision sees the top scores only; prefer :meth:`answer` on an engine
        output.
        """
        return self.post.results(Scores(probs, self.post.unknown(probs, novelty), novelty), top_k=top_k)

    def answer(self, output: EngineOutput, *, top_k: int | Sequence[int] = 5) -> list[ImageResult]:
        """The answers for an engine output: the one post-processing every entry point uses."""
        return self.post(output, top_k=top_k)

    def results(self, batch: torch.Tensor | Sequence[Any], *, top_k: int | Sequence[int] = 5) -> list[ImageResult]:
        """The :class:`ImageResult` of each image of a batch (prepared images or a normalised tensor): one pass."""
        return self.answer(self.engine.forward(batch), top_k=top_k)

    def classify_stream(
        self, images: Iterable[ImageInput], *, top_k: int = 5, budget: ThreadBudget | None = None
    ) -> Iterator[tuple[int, ImageResult | str]]:
        """Classifies images as they are decoded, in input order.

        Yields ``(index, ImageResult)``, or ``(index, reason)`` for an image that cannot be decoded.

        Args:
            images: Paths, bytes or PIL images (any iterable: a folder listing is streamed, not loaded).
            top_k: Breeds per answer.
            budget: Decoding and forward threads (default :meth:`ThreadBudget.plan`).
        """
        _check_top_k(top_k)
        for batch in self.engine.stream(images, budget=budget):
            answers = self.answer(batch.output, top_k=top_k) if batch.positions else []
            merged: list[tuple[int, ImageResult | str]] = [*zip(batch.positions, answers, strict=True)]
            merged += batch.failures
            yield from sorted(merged, key=lambda pair: pair[0])

    def classify(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[ImageResult]:
        """Like :meth:`predict`, but each answer also says whether the image looks like an unknown breed.

        Raises:
            UnreadableImageError: An image that cannot be decoded.
        """
        from dogclf.errors import UnreadableImageError

        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            images = [images]
        _check_top_k(top_k)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        images = list(images)
        budget = ThreadBudget.plan(decode_workers=0) if len(images) <= 1 else None
        results: list[ImageResult] = []
        for _, answer in self.classify_stream(images, top_k=top_k, budget=budget):
            if isinstance(answer, str):
                raise UnreadableImageError(answer)
            results.append(answer)
        return results

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction]]:
        """Ranks the classes of each image.

        Args:
            images: One image or a list of them: paths, bytes or PIL images.
            top_k: How many classes to return per image (capped at the class count).
            batch_size: Kept for compatibility; the engine picks its forward batch.

        Returns:
            For each image, the ``top_k`` best predictions, best first.
        """
        return [r.predictions for r in self.classify(images, top_k=top_k, batch_size=batch_size)]

    def info(self) -> dict[str, Any]:
        """The engine, precision (and why) and device, for ``/info`` and start-up lines."""
        return {
            "engine": self.engine.name,
            "precision": self.precision,
            "precision_reason": self.precision_choice.reason,
            "device": str(self.device),
            "forward_batch": self.engine.forward_batch,
        }


def load_model(
    model_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    precision: str | None = None,
    engine: str | None = "auto",
    forward_batch: int | None = None,
) -> Classifier:
    """Loads a model directory written by ``dogclf train`` (no network, no pickle).

    Args:
        model_dir: The directory holding ``model.safetensors`` and ``config.json``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        precision: ``None`` (the precision the model was calibrated in, run natively: see
            :func:`~dogclf.inference.precision.choose_precision`), ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
        engine: ``"auto"`` (default: OpenVINO on an x86 CPU where it is installed, else torch; see
            :func:`~dogclf.inference.openvino.resolve_engine`), ``"torch"``, ``"openvino"`` (the backbone compiled by
            OpenVINO) or ``"onnxruntime"`` (the model exported to ONNX; needs ``pip install "dogclf[onnx]"``).
        forward_batch: Most images per forward pass (default: 8 on a CPU, 64 on CUDA).

    Returns:
        A ready :class:`Classifier`, its engine compiled.

    Raises:
        ModelDirError: Missing or mismatched files, or an uninstalled backbone.
    """
    from dogclf.inference.openvino import resolve_engine

    root = Path(model_dir)
    config = load_config(root)
    spec = resolve_spec(config, root)
    net = build_net(config, spec, root)
    device_ = resolve_device(device)
    name = resolve_engine(engine, device_)
    choice = choose_precision(precision, config, device_)
    other = None
    if name != "torch":
        other = _runtime_engine(name, engine, net, spec, choice, forward_batch, root, config)
    classifier = Classifier(
        net,
        spec=spec,
        class_names=config.class_names,
        config=config,
        device=device_,
        precision=precision,
        engine=other,
        forward_batch=forward_batch,
        novelty=load_novelty(root, config),
    )
    if other is not None:
        classifier.precision_choice = choice
    return classifier


def _runtime_engine(
    name: str,
    requested: str | None,
    net: DogClassifierNet,
    spec: BackboneSpec,
    choice: PrecisionChoice,
    forward_batch: int | None,
    root: Path,
    config: ModelConfig,
) -> Engine | None:
    """The OpenVINO or ONNX Runtime engine, compiled; ``None`` when ``auto`` picked one that cannot run this model."""
    from dogclf.classifier.runtimes import runtime_engine

    engine = runtime_engine(
        name,
        net,
        spec.preprocessing,
        precision=choice.precision,
        forward_batch=forward_batch,
        model_dir=root,
        config=config,
    )
    prepare = getattr(getattr(engine, "compiled", None), "prepare", None)
    if prepare is None:
        return engine
    try:
        prepare()
    except Exception as exc:  # a backbone OpenVINO cannot convert: torch runs it when the user did not insist
        if requested not in (None, "auto"):
            raise
        _LOG.warning("OpenVINO could not compile the %s backbone (%s); running it in torch", spec.name, exc)
        return None
    return engine
