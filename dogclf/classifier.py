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
from dogclf.backbones.spec import BackboneSpec
from dogclf.data.images import load_rgb
from dogclf.data.transforms import eval_transform
from dogclf.errors import ModelDirError
from dogclf.model import DogClassifierNet, HeadConfig, build_head
from dogclf.train_config import resolve_device

__all__ = ["Classifier", "Prediction", "load_model"]

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


class Classifier:
    """A trained model with its class names and preprocessing.

    Args:
        net: The network.
        spec: Its backbone spec (preprocessing included).
        class_names: Display names in index order.
        config: The model directory's config.
        device: Where the network runs.
    """

    def __init__(
        self,
        net: DogClassifierNet,
        *,
        spec: BackboneSpec,
        class_names: Sequence[str],
        config: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.spec = spec
        self.class_names = list(class_names)
        self.config = config or {}
        self.transform = eval_transform(spec.preprocessing)

    @property
    def preprocessing(self) -> Any:
        """The input contract of the backbone."""
        return self.spec.preprocessing

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decodes and transforms images into one batch tensor."""
        size = self.spec.preprocessing.resize_size
        return torch.stack([self.transform(load_rgb(image, min_size=size)) for image in images])

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C)`` of a preprocessed batch."""
        return torch.softmax(self.net(batch.to(self.device)).float(), dim=1).cpu()

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
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            images = [images]
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        k = min(top_k, len(self.class_names))
        images = list(images)
        ranked: list[list[Prediction]] = []
        for start in range(0, len(images), batch_size):
            probs = self.probabilities(self.preprocess(images[start : start + batch_size]))
            scores, indices = probs.topk(k, dim=1)
            ranked += [
                [Prediction(int(i), self.class_names[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True)]
                for row_s, row_i in zip(scores, indices, strict=True)
            ]
        return ranked


def load_model(model_dir: str | os.PathLike[str], *, device: str = "cpu") -> Classifier:
    """Loads a model directory written by ``dogclf train`` (no network, no pickle).

    Args:
        model_dir: The directory holding ``model.safetensors`` and ``config.json``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

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
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelDirError(
            f"Weights in {str(root)!r} do not fit backbone {spec.name!r} with this head: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})."
        )
    return Classifier(net, spec=spec, class_names=config["class_names"], config=config, device=resolve_device(device))
