"""The backbone spec: everything dogclf needs to know about a feature extractor."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dogclf.errors import InvalidBackboneSpecError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BackboneSpec", "Preprocessing", "validate_spec"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How an image becomes an input tensor for a backbone.

    The image is resized so its shorter side is ``resize_size``, centre-cropped
    to ``input_size`` x ``input_size``, scaled to [0, 1] and normalised with
    ``mean`` and ``std`` per channel (RGB).

    Attributes:
        input_size: Side of the square input, in pixels.
        resize_size: Shorter side after resizing, before the crop.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return {
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Builds a Preprocessing from :meth:`to_dict` output."""
        return cls(
            input_size=int(data["input_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """A feature extractor that dogclf can put a new head on.

    ``build(pretrained=..., progress=...)`` returns an ``nn.Module`` that maps a
    float batch ``(N, 3, input_size, input_size)``, normalised as
    ``preprocessing`` says, to features ``(N, num_features)``, in train and in
    eval mode alike. With ``pretrained=True`` it fetches the ImageNet weights
    (downloading them into the provider's cache if needed); with ``False`` it
    must not touch the network or the disk.

    Attributes:
        name: Registry name, e.g. ``"resnet18"``.
        build: Factory ``build(*, pretrained: bool, progress: bool) -> nn.Module``.
        num_features: Width of the feature vector.
        preprocessing: The input contract (size, resize, mean, std).
        weights_source: Human-readable origin of the pretrained weights.
        weights_url: URL of the pretrained weights (file or repository), if any.
        weights_file: Name of the weights file; by default the last part of the URL.
        weights_cache: Returns the folder the provider caches weights in.
        weights_offline_hint: What to do without network, when copying the file into
            ``weights_cache`` is not the way (it completes "If this machine is offline, ...").
        classifier_prefixes: State-dict key prefixes of the original classifier,
            dropped when a local weights file is loaded into the backbone.
        description: One line for listings.
        distribution: Which installed distribution supplied the spec; filled in
            by the registry.
    """

    name: str
    build: Callable[..., nn.Module]
    num_features: int
    preprocessing: Preprocessing
    weights_source: str = "none"
    weights_url: str | None = None
    weights_file: str | None = None
    weights_cache: Callable[[], str] | None = None
    weights_offline_hint: str = ""
    classifier_prefixes: tuple[str, ...] = ()
    description: str = ""
    distribution: str = field(default="", compare=False)

    @property
    def weights_filename(self) -> str | None:
        """The file name of the pretrained weights (``weights_file``, else from the URL)."""
        if self.weights_file:
            return self.weights_file
        if not self.weights_url:
            return None
        return self.weights_url.rstrip("/").rsplit("/", 1)[-1]

    def summary(self) -> dict[str, Any]:
        """Returns a JSON-ready description used by listings."""
        return {
            "name": self.name,
            "input_size": self.preprocessing.input_size,
            "resize_size": self.preprocessing.resize_size,
            "num_features": self.num_features,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "weights": self.weights_source,
            "weights_url": self.weights_url,
            "distribution": self.distribution,
            "description": self.description,
        }


def _fail(name: object, where: str, problem: str) -> InvalidBackboneSpecError:
    return InvalidBackboneSpecError(f"Invalid backbone spec {name!r} from {where}: {problem}")


def validate_spec(spec: object, *, where: str) -> BackboneSpec:
    """Checks that ``spec`` is a usable :class:`BackboneSpec`.

    Args:
        spec: What a registration call or a plugin factory handed over.
        where: Who supplied it (a distribution or ``"register_backbone()"``),
            named in the error.

    Returns:
        The same spec.

    Raises:
        InvalidBackboneSpecError: Naming the offender and the mismatch.
    """
    if not isinstance(spec, BackboneSpec):
        raise InvalidBackboneSpecError(
            f"Invalid backbone from {where}: expected a dogclf.BackboneSpec, got {type(spec).__name__}. "
            "A plugin factory must return BackboneSpec(name=..., build=..., num_features=..., preprocessing=...)."
        )
    name = spec.name
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(name, where, "name must be letters, digits and '_.-/', starting with a letter or digit")
    if name.startswith("timm/"):
        raise _fail(name, where, "names starting with 'timm/' are reserved for timm models")
    if not callable(spec.build):
        raise _fail(name, where, f"build must be callable, got {type(spec.build).__name__}")
    if not isinstance(spec.num_features, int) or spec.num_features <= 0:
        raise _fail(name, where, f"num_features must be a positive int, got {spec.num_features!r}")
    pre = spec.preprocessing
    if not isinstance(pre, Preprocessing):
        raise _fail(name, where, f"preprocessing must be a dogclf.Preprocessing, got {type(pre).__name__}")
    if not isinstance(pre.input_size, int) or pre.input_size < 8:
        raise _fail(name, where, f"input_size must be an int >= 8, got {pre.input_size!r}")
    if not isinstance(pre.resize_size, int) or pre.resize_size < pre.input_size:
        raise _fail(
            name, where, f"resize_size must be an int >= input_size ({pre.input_size}), got {pre.resize_size!r}"
        )
    for label, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise _fail(name, where, f"{label} must be three numbers (R, G, B), got {values!r}")
    if not all(v > 0 for v in pre.std):
        raise _fail(name, where, f"std values must be positive, got {pre.std!r}")
    if pre.interpolation not in _INTERPOLATIONS:
        raise _fail(
            name, where, f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {pre.interpolation!r}"
        )
    return spec
