"""``config.json`` of a model directory as typed, frozen records: :class:`ModelConfig` and its sections.

``ModelConfig.from_dict(parsed_json, source=path)`` checks every field (:mod:`dogclf.artifact.checks`: types, ranges,
required keys) and raises :class:`~dogclf.errors.ModelDirError` naming the file and the key; ``to_dict()`` gives the
JSON object back. The records keep what they do not know: keys this dogclf does not read are kept in ``extra``, and
each record remembers the order (and the presence) of the keys it was read with, so a saved ``config.json`` read and
written again is the same object, key for key and in the same order (``head`` is written with all its fields, the
``preprocessing`` numbers as floats). Key order and absent-versus-null are not part of equality:
``from_dict(c.to_dict()) == c`` for every record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dogclf.artifact.checks import check_class_lists, check_config, check_weight_shapes
from dogclf.artifact.manifest import check_manifest_shape
from dogclf.backbones.spec import Preprocessing
from dogclf.errors import ModelDirError

if TYPE_CHECKING:
    from dogclf.data.folder import ClassInfo
    from dogclf.model import HeadConfig

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CalibrationRecord",
    "FileRecord",
    "MetricsRecord",
    "ModelConfig",
    "NoveltyRecord",
    "TrainingRecord",
    "config_section",
]

FORMAT_VERSION = 1
"""The newest ``config.json`` format this dogclf reads and the one it writes."""
REQUIRED_KEYS = ("format_version", "backbone", "class_names", "preprocessing", "head", "num_features")
_R = TypeVar("_R", bound="_Record")


@dataclass(frozen=True, kw_only=True)
class _Record:
    """A JSON object read into typed fields; keys it does not know are kept in ``extra``.

    Attributes:
        extra: The object's keys this dogclf does not read, with their values as read (written back unchanged).
        keys: The object's keys in the order read (``None``: the fields' order, the ``None`` ones left out). Not
            part of equality.
    """

    extra: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    _CONVERT: ClassVar[Mapping[str, Any]] = {}  # field name -> function from its JSON value

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "keys"))

    @classmethod
    def parse(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Builds the record from a JSON object without checking it: for objects dogclf built (``from_dict`` checks)."""
        names = cls._names()
        values = {k: cls._CONVERT.get(k, _same)(v) for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**values, extra=extra, keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the keys as read (new ones after), the fields set since, then ``extra``'s."""
        names = self._names()
        order = [k for k in self.keys or () if k in names or k in self.extra]
        order += [n for n in names if n not in order and getattr(self, n) is not None]
        order += [k for k in self.extra if k not in order]
        return {k: _dump(getattr(self, k) if k in names else self.extra[k]) for k in order}


def _same(value: Any) -> Any:
    return value


def _dump(value: Any) -> Any:
    """A field's value as JSON data (records and dataclasses by their ``to_dict``, tuples as lists)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_dump(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class CalibrationRecord(_Record):
    """``"calibration"``: what temperature scaling fitted (:class:`dogclf.training.calibration.Calibration`).

    Attributes:
        temperature: Scores are ``softmax(logits / temperature)``, in ``TEMPERATURE_RANGE``; ``None``: 1.0.
        unknown_threshold: A top score below it answers unknown; ``None``: never.
        keep: The share of validation images the threshold keeps as known.
        ece_before: Validation ECE at temperature 1.
        ece_after: Validation ECE at ``temperature``.
        nll_before: Validation mean NLL at temperature 1.
        nll_after: Validation mean NLL at ``temperature``.
        n: Validation images it was fitted on.
        precision: What the validation logits were computed in (``fp32``, ``bf16``, ``fp16``), or ``None``.
    """

    temperature: float | None = None
    unknown_threshold: float | None = None
    keep: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    n: int | None = None
    precision: str | None = None


@dataclass(frozen=True, kw_only=True)
class NoveltyRecord(_Record):
    """``"novelty"``: the novelty score's settings (:meth:`dogclf.inference.novelty.NoveltyScorer.to_config`).

    ``None`` for ``k``, ``shrinkage``, ``temperature`` and ``keep`` means the scorer's default.

    Attributes:
        method: The score, e.g. ``knn+energy`` (checked against the known ones when the scorer loads); ``None``
            only for an empty ``"novelty": {}``, which means no novelty score.
        file: Its tensors' file in the model directory; ``None``: ``novelty.safetensors``.
        k: Which neighbour's distance the ``knn`` part is.
        shrinkage: The Mahalanobis covariance's shrinkage.
        temperature: The energy part's temperature.
        scales: ``{part: (centre, spread)}`` of a combination.
        threshold: A score above it answers unknown; ``None``: never.
        keep: The share of validation photos the threshold keeps as known.
    """

    method: str | None = None
    file: str | None = None
    k: int | None = None
    shrinkage: float | None = None
    temperature: float | None = None
    scales: Mapping[str, tuple[float, float]] | None = None
    threshold: float | None = None
    keep: float | None = None
    _CONVERT: ClassVar[Mapping[str, Any]] = {
        "scales": lambda v: None if v is None else {str(k): (pair[0], pair[1]) for k, pair in v.items()}
    }


@dataclass(frozen=True, kw_only=True)
class MetricsRecord(_Record):
    """``"metrics"``: what training measured.

    Attributes:
        final: The kept epoch's metrics (``{}`` if no epoch ran).
        history: Every epoch's metrics, across resumes.
        test: ``top1``, ``top5``, ``n``, ``loss`` on the test split, or ``None`` without one.
    """

    final: Mapping[str, Any] | None = None
    history: list[Mapping[str, Any]] | None = None
    test: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingRecord(_Record):
    """``"training"``: the training settings (the ``TrainConfig`` fields and more; those not read here in ``extra``).

    Attributes:
        seed: The random seed (it drew the held-out validation split).
        data: The data folder as given.
        valid_fraction: The share of ``train/`` held out for validation, or ``None`` (a ``valid/`` folder).
        n_train: Training images.
        n_valid: Validation images.
        n_test: Test images.
        train_files: Digest of which training files, by path, size and label.
        valid_files: The same for the validation files.
        features: How the head was trained (``cached``, ``in-memory`` or ``images``).
        precision: The extracted features' precision (``fp32``, ``bf16``, ``fp16``).
    """

    seed: int | None = None
    data: str | None = None
    valid_fraction: float | None = None
    n_train: int | None = None
    n_valid: int | None = None
    n_test: int | None = None
    train_files: str | None = None
    valid_files: str | None = None
    features: str | None = None
    precision: str | None = None


@dataclass(frozen=True, kw_only=True)
class FileRecord(_Record):
    """One entry of ``"files"``: the size and SHA-256 of a file saved with ``config.json``."""

    bytes: int
    sha256: str


def _files(value: Any) -> dict[str, FileRecord] | None:
    return None if value is None else {name: FileRecord.parse(entry) for name, entry in value.items()}


def _head(value: Mapping[str, Any]) -> HeadConfig:
    from dogclf.model import HeadConfig

    return HeadConfig(**value)


def _optional(parse: Any) -> Any:
    return lambda value: None if value is None else parse(value)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Record):
    """A model directory's ``config.json`` (docs/artifact.md describes each key).

    Attributes:
        format_version: The directory format (at most :data:`FORMAT_VERSION`).
        dogclf_version: The dogclf that wrote it.
        backbone: The backbone's registry name.
        backbone_distribution: Who supplied the backbone (named when it is missing).
        num_features: The backbone's feature width.
        num_classes: The number of classes.
        class_names: Display names in output order.
        class_folders: Class folder names in the same order (``None``: the display names).
        preprocessing: The input contract the model was trained with.
        head: The head's shape.
        frozen_backbone: Whether the backbone was frozen in training.
        metrics: What training measured.
        training: The training settings.
        calibration: Temperature and unknown threshold; ``None``: temperature 1.0, never unknown.
        novelty: The novelty score's settings; ``None``: the softmax threshold alone decides unknown.
        files: ``{file name: FileRecord}`` of the files saved with it; ``None`` for models saved before.
    """

    format_version: int
    dogclf_version: str | None = None
    backbone: str
    backbone_distribution: str | None = None
    num_features: int
    num_classes: int | None = None
    class_names: tuple[str, ...]
    class_folders: tuple[str, ...] | None = None
    preprocessing: Preprocessing
    head: HeadConfig
    frozen_backbone: bool | None = None
    metrics: MetricsRecord | None = None
    training: TrainingRecord | None = None
    calibration: CalibrationRecord | None = None
    novelty: NoveltyRecord | None = None
    files: Mapping[str, FileRecord] | None = None
    _CONVERT: ClassVar[Mapping[str, Any]] = {
        "class_names": tuple,
        "class_folders": _optional(tuple),
        "preprocessing": Preprocessing.from_dict,  # numbers as floats, for the transforms
        "head": _head,
        "metrics": _optional(MetricsRecord.parse),
        "training": _optional(TrainingRecord.parse),
        "calibration": _optional(CalibrationRecord.parse),
        "novelty": _optional(NoveltyRecord.parse),
        "files": _files,
    }

    @classmethod
    def from_dict(
        cls, data: Any, *, source: str | Path = "config.json", weights: str | Path | None = None
    ) -> ModelConfig:
        """Checks a parsed ``config.json`` and reads it.

        Args:
            data: The parsed JSON.
            source: The file it was read from (named in errors).
            weights: ``model.safetensors`` to check the head's shapes against (its header only), before the class
                lists are compared; ``None``: no weights check.

        Raises:
            ModelDirError: A required key is missing, or a key has the wrong type or range (naming the file, the key,
                what it holds and what would work).
        """
        path = Path(source)
        absent = [k for k in REQUIRED_KEYS if not isinstance(data, Mapping) or k not in data]
        if isinstance(data, Mapping) and absent:
            raise ModelDirError(
                f"{str(path)!r} lacks keys: {', '.join(absent)}. A dogclf config.json holds at least "
                f"{', '.join(REQUIRED_KEYS)}; retrain the model (`dogclf train`) to write a complete one."
            )
        check_config(data, path, format_version=FORMAT_VERSION)
        check_manifest_shape(data, path)
        if weights is not None:
            check_weight_shapes(data, Path(weights), config_path=path)
        check_class_lists(data, path)
        return cls.parse(data)

    @property
    def classes(self) -> list[ClassInfo]:
        """The classes (folder id and display name) in output order; the names are the folders of older models."""
        from dogclf.artifact.store import model_classes

        return model_classes(self)


def config_section(config: ModelConfig | Mapping[str, Any], name: str) -> Any:
    """One key of a :class:`ModelConfig`, or of a ``config.json`` object given as a dict (read as the record would).

    Lets the functions that take a model's config accept a part of one, as ``{"calibration": {...}}``.

    Args:
        config: The config, or a (possibly partial) dict of one.
        name: A :class:`ModelConfig` field, e.g. ``"calibration"``.
    """
    if isinstance(config, ModelConfig):
        return getattr(config, name)
    value = config.get(name)
    return None if value is None else ModelConfig._CONVERT.get(name, _same)(value)
