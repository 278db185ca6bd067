"""``config.json`` as a typed ``ModelConfig``: written back byte for byte, checked on load, older files still load."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import dogclf
from dogclf.artifact import load_config, read_config
from dogclf.artifact.config import CalibrationRecord, ModelConfig, NoveltyRecord, TrainingRecord
from dogclf.backbones.spec import Preprocessing
from dogclf.errors import DogclfError, ModelDirError
from dogclf.model import HeadConfig

# The keys of each object of the config.json that `dogclf train` wrote before ModelConfig existed (commit a3d5436,
# tinynet, 60 validation images: calibrated, with the default novelty score), in the order it wrote them.
MAIN_KEYS = {
    "": [
        "format_version", "dogclf_version", "backbone", "backbone_distribution", "num_features", "num_classes",
        "class_names", "class_folders", "preprocessing", "head", "frozen_backbone", "metrics", "training",
        "calibration", "novelty", "files",
    ],
    "preprocessing": ["input_size", "resize_size", "mean", "std", "interpolation"],
    "head": ["hidden", "dropout"],
    "metrics": ["final", "history", "test"],
    "calibration": [
        "temperature", "unknown_threshold", "keep", "ece_before", "ece_after", "nll_before", "nll_after", "n",
        "precision",
    ],
    "novelty": ["method", "file", "k", "temperature", "scales", "threshold", "keep"],
    "files": ["model.safetensors", "novelty.safetensors"],
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory written by ``dogclf train`` (tinynet, calibrated, with a novelty score)."""
    from conftest import _tiny_namespace

    from dogclf.backbones.registry import default_registry
    from dogclf.cli import main

    root = tmp_path_factory.mktemp("model_config")
    data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=(8, 20, 2), size=40, seed=1)
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/conftest.py")  # type: ignore[operator]
    try:
        args = ["train", "--data", str(data), "--out", str(root / "model"), "--backbone", "tinynet", "--epochs", "1"]
        args += ["--weights", "none", "--workers", "0", "--batch-size", "8", "--device", "cpu"]
        code = main(args)
    finally:
        registry.unregister("tinynet")
    assert code == 0
    return root / "model"


def test_a_trained_config_json_is_read_and_written_back_byte_for_byte(trained: Path) -> None:
    path = trained / "config.json"
    text = path.read_text(encoding="utf-8")

    config = ModelConfig.from_dict(json.loads(text), source=path, weights=trained / "model.safetensors")

    assert json.dumps(config.to_dict(), indent=2) + "\n" == text
    assert config == load_config(trained)
    assert read_config(trained) == json.loads(text)


def test_the_written_config_json_has_the_keys_the_code_before_model_config_wrote(trained: Path) -> None:
    saved = json.loads((trained / "config.json").read_text(encoding="utf-8"))

    found = {"": list(saved)} | {key: list(saved[key]) for key in MAIN_KEYS if key}

    assert found == MAIN_KEYS


def test_the_typed_fields_hold_what_config_json_says(trained: Path) -> None:
    saved = json.loads((trained / "config.json").read_text(encoding="utf-8"))

    config = load_config(trained)

    assert config.backbone == "tinynet"
    assert config.num_features == 16
    assert config.format_version == 1
    assert config.class_names == tuple(saved["class_names"])
    assert [c.folder for c in config.classes] == saved["class_folders"]
    assert config.preprocessing == Preprocessing.from_dict(saved["preprocessing"])
    assert config.head == HeadConfig(**saved["head"])
    assert isinstance(config.calibration, CalibrationRecord)
    assert config.calibration.temperature == saved["calibration"]["temperature"]
    assert isinstance(config.novelty, NoveltyRecord)
    assert config.novelty.method == saved["novelty"]["method"]
    assert config.novelty.scales == {k: tuple(v) for k, v in saved["novelty"]["scales"].items()}
    assert isinstance(config.training, TrainingRecord)
    assert config.training.n_valid == 60
    assert config.training.extra["epochs"] == 1  # the TrainConfig fields it does not read are kept as read
    assert config.files is not None
    assert config.files["model.safetensors"].bytes == ((trained / "model.safetensors").stat().st_size)
    assert config.metrics is not None
    assert config.metrics.final == saved["metrics"]["final"]


def test_a_loaded_classifier_has_the_typed_config_and_the_dict_it_had(trained: Path, tiny_spec: Any) -> None:
    classifier = dogclf.load_model(trained, engine="torch")

    assert classifier.model_config == load_config(trained)
    assert classifier.config == json.loads((trained / "config.json").read_text(encoding="utf-8"))


def _older(trained: Path, tmp_path: Path, change: Any) -> Path:
    target = tmp_path / "older"
    shutil.copytree(trained, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    change(config)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target


def _drop(*keys: str) -> Any:
    def change(config: dict[str, Any]) -> None:
        for key in keys:
            section, _, name = key.rpartition(".")
            (config[section] if section else config).pop(name)

    return change


def _precision_in_training(config: dict[str, Any]) -> None:
    config["calibration"].pop("precision")
    config["training"]["precision"] = "fp32"


@pytest.mark.parametrize(
    "change",
    [
        _drop("files"),  # before the manifest
        _drop("files", "novelty"),  # before the novelty score
        _drop("files", "novelty", "calibration"),  # before calibration
        _drop("files", "class_folders", "num_classes", "dogclf_version", "backbone_distribution", "frozen_backbone"),
        _drop("calibration.precision"),  # before the precision was recorded
        _precision_in_training,  # the features' precision only
        _drop("novelty.temperature", "novelty.scales"),
        lambda config: config.update(written_by="a later dogclf"),  # a key this dogclf does not know: kept
    ],
    ids=["no-files", "no-novelty", "no-calibration", "first-release", "no-precision", "training-precision",
         "knn-only-novelty-keys", "unknown-key"],
)  # fmt: skip
def test_older_config_json_files_still_load_and_are_written_back_unchanged(
    trained: Path, tmp_path: Path, tiny_spec: Any, change: Any
) -> None:
    model = _older(trained, tmp_path, change)
    text = (model / "config.json").read_text(encoding="utf-8")

    config = load_config(model)
    classifier = dogclf.load_model(model, engine="torch")

    assert json.dumps(config.to_dict(), indent=2) + "\n" == text
    assert len(classifier.predict(Image.new("RGB", (40, 40), (120, 80, 40)), top_k=2)[0]) == 2


def _valid() -> dict[str, Any]:
    """A small valid config.json object (no weights to check it against)."""
    return {
        "format_version": 1,
        "backbone": "tinynet",
        "num_features": 16,
        "class_names": ["Beagle", "Basenji"],
        "preprocessing": {"input_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.25] * 3},
        "head": {"hidden": 0, "dropout": 0.0},
        "calibration": {"temperature": 1.5, "unknown_threshold": 0.4},
        "novelty": {"method": "knn", "file": "novelty.safetensors", "k": 10, "threshold": 0.3, "keep": 0.95},
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(_valid())
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is _ABSENT:
        del node[last]
    else:
        node[last] = value
    return config


_ABSENT = object()


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("head", _ABSENT, "lacks keys: head. A dogclf config.json holds at least format_version, backbone,"),
        ("class_names", _ABSENT, "lacks keys: class_names."),
        ("calibration.temperature", 0, "calibration.temperature must be a finite number in [0.001, 1000], got 0"),
        ("calibration.temperature", 5000.0, "calibration.temperature must be a finite number in [0.001, 1000]"),
        ("calibration.n", 1.5, "calibration.n must be an integer >= 0, got 1.5"),
        ("novelty.k", 0, "novelty.k must be an integer >= 1, got 0"),
        ("novelty.method", 3, "novelty.method must be a method name such as 'knn', got 3"),
        ("class_folders", ["beagle"], "class_folders has 1 entries but class_names has 2"),
        ("num_classes", 3, "num_classes is 3 but class_names has 2 entries"),
        ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean must be three numbers (R, G, B), got [0.5, 0.5]"),
        ("head.depth", 2, "head.depth is not a head setting (known: hidden, dropout)"),
        ("training", {"seed": "0"}, "training.seed must be an integer"),
        ("files", {"model.safetensors": {"bytes": 1, "sha256": "x"}}, "files.model.safetensors.sha256 must be 64"),
        ("format_version", 2, "has model format 2, newer than this dogclf reads (1); upgrade dogclf"),
    ],
)
def test_from_dict_refuses_a_bad_key_naming_the_file_and_the_key(key: str, value: Any, says: str) -> None:
    source = Path("/models/lite0/config.json")

    with pytest.raises(ModelDirError) as caught:
        ModelConfig.from_dict(_with(key, value), source=source)

    message = str(caught.value)
    assert says in message
    assert str(source.parent if key == "format_version" else source) in message
    assert isinstance(caught.value, DogclfError)
    assert "\n" not in message


@pytest.mark.parametrize("data", [[], "config", None, 3])
def test_from_dict_refuses_json_that_is_not_an_object(data: Any) -> None:
    with pytest.raises(ModelDirError, match=r"'config\.json' must hold a JSON object"):
        ModelConfig.from_dict(data)


def test_absent_optional_sections_read_as_none_and_stay_absent() -> None:
    config = ModelConfig.from_dict(_with("calibration", _ABSENT) | {"novelty": {}})

    assert config.calibration is None
    assert config.training is None
    assert config.files is None
    assert config.novelty == NoveltyRecord()  # an empty entry: no novelty score (dogclf.inference.novelty.load_novelty)
    assert config.classes[0].folder == "Beagle"  # no class_folders: the names are the folders
    assert "calibration" not in config.to_dict()
    assert config.to_dict()["novelty"] == {}


def test_a_changed_field_is_written_in_its_place_and_an_added_section_after_the_read_ones() -> None:
    config = ModelConfig.from_dict(_with("calibration", _ABSENT))

    warmer = dataclasses.replace(config, backbone="resnet18", calibration=CalibrationRecord(temperature=2.0))

    written = warmer.to_dict()
    assert list(written) == [*_with("calibration", _ABSENT), "calibration"]
    assert written["backbone"] == "resnet18"
    assert written["calibration"] == {"temperature": 2.0}
    assert ModelConfig.from_dict(written) == warmer


_FLOATS = st.floats(min_value=0.001, max_value=1000, allow_nan=False)
_NAMES = st.lists(st.text(min_size=1, max_size=8).filter(str.strip), min_size=2, max_size=5, unique=True)
_EXTRA = st.dictionaries(st.sampled_from(["note", "written_by", "x-custom"]), st.integers() | st.text(max_size=5))


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    """Valid config.json objects: optional sections present or not, keys in any order, unknown keys too."""
    names = draw(_NAMES)
    config: dict[str, Any] = {
        "format_version": 1,
        "backbone": draw(st.sampled_from(["tinynet", "resnet18", "timm/efficientnet_b0"])),
        "num_features": draw(st.integers(1, 4096)),
        "class_names": names,
        "preprocessing": {
            "input_size": 32,
            "resize_size": draw(st.integers(32, 64)),
            "mean": draw(st.lists(st.floats(-1, 1), min_size=3, max_size=3)),
            "std": draw(st.lists(st.floats(0.01, 1), min_size=3, max_size=3)),
            "interpolation": draw(st.sampled_from(["nearest", "bilinear", "bicubic"])),
        },
        "head": {"hidden": draw(st.integers(0, 64)), "dropout": draw(st.floats(0, 0.9))},
    }
    optional = {
        "dogclf_version": st.just("0.1.0"),
        "backbone_distribution": st.none() | st.just("dogclf (built-in)"),
        "num_classes": st.just(len(names)),
        "class_folders": st.just([f"{i:03d}.{n}" for i, n in enumerate(names)]),
        "frozen_backbone": st.booleans(),
        "metrics": st.fixed_dictionaries({"final": st.just({"epoch": 1.0}), "test": st.none()}),
        "training": st.fixed_dictionaries(
            {"epochs": st.integers(1, 9), "seed": st.integers(0, 9), "valid_fraction": st.none() | st.just(0.2)},
            optional={"precision": st.sampled_from(["fp32", "bf16"]), "lr": _FLOATS},
        ),
        "calibration": st.fixed_dictionaries(
            {"temperature": _FLOATS}, optional={"unknown_threshold": st.none() | st.floats(0, 1), "n": st.just(60)}
        ),
        "novelty": st.fixed_dictionaries(
            {"method": st.sampled_from(["knn", "knn+energy"]), "threshold": st.none() | st.floats(-5, 5)},
            optional={"k": st.integers(1, 20), "scales": st.just({"knn": [0.1, 0.2], "energy": [-0.4, 0.15]})},
        ),
        "files": st.just({"model.safetensors": {"bytes": 7468, "sha256": "f" * 64}}),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(optional)), unique=True))
    config |= {key: draw(optional[key]) for key in chosen} | draw(_EXTRA)
    order = draw(st.permutations(list(config)))
    return {key: config[key] for key in order}


@settings(max_examples=150, deadline=None)
@given(data=_configs())
def test_to_dict_gives_back_the_object_read_and_from_dict_of_it_the_same_config(data: dict[str, Any]) -> None:
    config = ModelConfig.from_dict(data)

    written = config.to_dict()

    assert written == data
    assert list(written) == list(data)
    assert ModelConfig.from_dict(written) == config
    assert json.loads(json.dumps(written)) == data


def test_head_and_preprocessing_are_written_in_full_and_the_config_cannot_be_changed_in_place() -> None:
    data = _with("head", {}) | {"preprocessing": _valid()["preprocessing"] | {"mean": [0, 0, 0]}}

    config = ModelConfig.from_dict(data)

    assert config.to_dict()["head"] == {"hidden": 0, "dropout": 0.0}
    assert config.to_dict()["preprocessing"]["mean"] == [0.0, 0.0, 0.0]
    assert config.to_dict()["preprocessing"]["interpolation"] == "bilinear"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backbone = "resnet18"  # type: ignore[misc]
