"""The backbone registry: built-ins, registration, validation, lazy entry-point plugins, timm names."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TINY_PLUGIN_SOURCE, _tiny_namespace

import dogclf
from dogclf._compat import import_torchvision
from dogclf.backbones.registry import ENTRY_POINT_GROUP, BackboneRegistry, default_registry
from dogclf.backbones.spec import BackboneSpec, Preprocessing
from dogclf.errors import DuplicateBackboneError, InvalidBackboneSpecError, UnknownBackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Extra factories appended to the tiny plugin source, each the target of one fake entry point.
PLUGIN_FACTORIES = textwrap.dedent(
    """

    def othernet():
        return tiny("othernet")


    def misnamed():
        return tiny("not_the_entry_point_name")


    def not_a_spec():
        return {"name": "dictnet", "num_features": 16}


    def zero_features():
        import dataclasses

        return dataclasses.replace(tiny("zeronet"), num_features=0)


    def raises():
        raise RuntimeError("needs a GPU driver")


    NOT_CALLABLE = 3
    """
)


class RecordingEntryPoints:
    """An ``entry_points=`` seam that returns fixed entry points and records each call."""

    def __init__(self, entry_points: list[importlib.metadata.EntryPoint]) -> None:
        self.entry_points = entry_points
        self.calls: list[str] = []

    def __call__(self, group: str) -> list[importlib.metadata.EntryPoint]:
        self.calls.append(group)
        return [ep for ep in self.entry_points if ep.group == group]


def _ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def _tiny(name: str) -> BackboneSpec:
    return _tiny_namespace()["tiny"](name)  # type: ignore[operator]


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Writes an importable module under ``tmp_path`` and returns its name; forgets it afterwards."""
    root = tmp_path / "modules"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (root / f"{name}.py").write_text(source, encoding="utf-8")
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def fake_plugin(plugin_module: Callable[[str, str], str]) -> str:
    """A module ``dogclf_fakeplugin`` with the factories in :data:`PLUGIN_FACTORIES`."""
    return plugin_module("dogclf_fakeplugin", TINY_PLUGIN_SOURCE + PLUGIN_FACTORIES)


def _dist_entry_points(root: Path, dists: dict[str, dict[str, str]]) -> list[importlib.metadata.EntryPoint]:
    """Writes one dist-info per ``"name version"`` key under ``root``; returns their real, dist-bound entry points."""
    for label, entries in dists.items():
        name, version = label.split()
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
        lines = "".join(f"{ep_name} = {value}\n" for ep_name, value in entries.items())
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")
    return [
        ep
        for dist in importlib.metadata.distributions(path=[str(root)])
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP)
    ]


# --- built-ins and lookups ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_features", "input_size", "resize_size", "weights_enum"),
    [
        ("resnet18", 512, 224, 256, "ResNet18_Weights"),
        ("resnet50", 2048, 224, 256, "ResNet50_Weights"),
        ("inception_v3", 2048, 299, 342, "Inception_V3_Weights"),
    ],
)
def test_builtin_backbones(name: str, num_features: int, input_size: int, resize_size: int, weights_enum: str) -> None:
    spec = dogclf.get_backbone(name)
    # The URL the spec names (in listings and the offline error) must be the file torchvision really downloads.
    real_url = getattr(import_torchvision().models, weights_enum).IMAGENET1K_V1.url

    assert spec.name == name
    assert spec.num_features == num_features
    assert spec.preprocessing == Preprocessing(
        input_size=input_size, resize_size=resize_size, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert spec.distribution == "dogclf (built-in)"
    assert spec.weights_url == real_url
    assert spec.weights_filename == real_url.rsplit("/", 1)[-1]
    assert spec.summary()["num_features"] == num_features


def test_unknown_backbone_lists_known_names() -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))

    with pytest.raises(UnknownBackboneError) as excinfo:
        registry.get("resnet19")

    message = str(excinfo.value)
    assert message.startswith("Unknown backbone 'resnet19'.")
    assert "Did you mean 'resnet18', 'resnet50'?" in message
    assert "Known backbones: inception_v3, resnet18, resnet50;" in message
    assert "'timm/<model>'" in message
    assert "'dogclf.backbones' entry-point group" in message


def test_unknown_backbone_is_a_key_error_from_the_default_registry() -> None:
    with pytest.raises(KeyError, match="Unknown backbone 'no_such_net'") as excinfo:
        dogclf.get_backbone("no_such_net")

    assert isinstance(excinfo.value, UnknownBackboneError)
    assert "efficientnet_lite0" in str(excinfo.value)  # the installed plugin is listed too
    assert "Did you mean" not in str(excinfo.value)


def test_duplicate_registration_raises_and_names_the_holder() -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))

    with pytest.raises(DuplicateBackboneError) as excinfo:
        registry.register(_tiny("resnet18"), source="my_notebook")

    message = str(excinfo.value)
    assert "'resnet18' is already registered (by dogclf (built-in))" in message
    assert "my_notebook tried to register it again" in message
    assert "override=True" in message
    assert registry.get("resnet18").num_features == 512


def test_override_replaces_and_records_the_source() -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))

    registry.register(_tiny("resnet18"), override=True, source="my_notebook")

    spec = registry.get("resnet18")
    assert spec.num_features == 16
    assert spec.distribution == "my_notebook"


def test_unregister_removes_a_backbone() -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))
    registry.register(_tiny("tmpnet"))
    assert registry.get("tmpnet").name == "tmpnet"

    registry.unregister("tmpnet")

    with pytest.raises(UnknownBackboneError):
        registry.get("tmpnet")


@pytest.fixture
def registered_in_default() -> Iterator[list[str]]:
    """Names listed here are removed from the default registry after the test."""
    names: list[str] = []
    yield names
    for name in names:
        default_registry().unregister(name)


def test_register_backbone_uses_the_default_registry(registered_in_default: list[str]) -> None:
    registered_in_default.append("notebooknet")

    returned = dogclf.register_backbone(_tiny("notebooknet"))

    assert dogclf.get_backbone("notebooknet") is returned
    assert returned.distribution == "register_backbone()"
    assert "notebooknet" in [s.name for s in dogclf.list_backbones("notebook*")]
    with pytest.raises(DuplicateBackboneError, match="'notebooknet' is already registered"):
        dogclf.register_backbone(_tiny("notebooknet"))


def _replace(**changes: object) -> Callable[[BackboneSpec], object]:
    return lambda spec: dataclasses.replace(spec, **changes)


def _replace_pre(**changes: object) -> Callable[[BackboneSpec], object]:
    return lambda spec: dataclasses.replace(spec, preprocessing=dataclasses.replace(spec.preprocessing, **changes))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(_replace(name="has space"), "name must be letters, digits", id="name-space"),
        pytest.param(_replace(name="-leading"), "starting with a letter or digit", id="name-dash"),
        pytest.param(_replace(name=""), "name must be letters", id="name-empty"),
        pytest.param(_replace(name="timm/mine"), "reserved for timm models", id="name-timm"),
        pytest.param(_replace(build="not callable"), "build must be callable, got str", id="build"),
        pytest.param(_replace(num_features=0), "num_features must be a positive int, got 0", id="features-0"),
        pytest.param(_replace(num_features=-5), "num_features must be a positive int, got -5", id="features-neg"),
        pytest.param(_replace(num_features="16"), "num_features must be a positive int, got '16'", id="features-str"),
        pytest.param(_replace(preprocessing=None), "preprocessing must be a dogclf.Preprocessing", id="pre-none"),
        pytest.param(_replace_pre(input_size=4), "input_size must be an int >= 8, got 4", id="input-small"),
        pytest.param(
            _replace_pre(resize_size=30), "resize_size must be an int >= input_size (32), got 30", id="resize<input"
        ),
        pytest.param(_replace_pre(mean=(0.5, 0.5)), "mean must be three numbers (R, G, B)", id="mean-2"),
        pytest.param(_replace_pre(mean=("a", 0.5, 0.5)), "mean must be three numbers", id="mean-str"),
        pytest.param(_replace_pre(std=(0.2, 0.2, 0.2, 0.2)), "std must be three numbers", id="std-4"),
        pytest.param(_replace_pre(std=(0.2, 0.0, 0.2)), "std values must be positive", id="std-zero"),
        pytest.param(_replace_pre(interpolation="lanczos"), "interpolation must be one of", id="interp"),
        pytest.param(lambda spec: {"name": "dictnet"}, "expected a dogclf.BackboneSpec, got dict", id="not-a-spec"),
    ],
)
def test_invalid_specs_are_refused(mutate: Callable[[BackboneSpec], object], expected: str) -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))
    bad = mutate(_tiny("badnet"))

    with pytest.raises(InvalidBackboneSpecError) as excinfo:
        registry.register(bad, source="my_plugin 1.0")  # type: ignore[arg-type]

    message = str(excinfo.value)
    assert expected in message
    assert "my_plugin 1.0" in message
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(UnknownBackboneError):
        registry.get("badnet")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["inception_v3", "resnet2", "resnet10", "resnet18", "resnet50", "resnet101", "ResNet200"]),
        ("resnet*", ["resnet2", "resnet10", "resnet18", "resnet50", "resnet101"]),
        ("resnet1*", ["resnet10", "resnet18", "resnet101"]),
        ("*net?", ["resnet2"]),
        ("inception_*", ["inception_v3"]),
        ("vgg*", []),
    ],
)
def test_wildcard_listing_sorts_naturally(pattern: str, expected: list[str]) -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))
    for name in ("resnet101", "ResNet200", "resnet2", "resnet10"):
        registry.register(_tiny(name))

    assert registry.names(pattern) == expected
    assert [spec.name for spec in registry.list(pattern)] == expected


def test_default_listing_includes_builtins_and_the_installed_plugin() -> None:
    names = [spec.name for spec in dogclf.list_backbones()]

    assert {"resnet18", "resnet50", "inception_v3", "efficientnet_lite0"} <= set(names)
    assert names.index("resnet18") < names.index("resnet50")
    assert [spec.name for spec in dogclf.list_backbones("resnet*")] == ["resnet18", "resnet50"]


def test_installed_plugin_records_its_distribution() -> None:
    version = importlib.metadata.version("dogclf-efficientnet-lite")

    spec = dogclf.get_backbone("efficientnet_lite0")

    assert spec.distribution == f"dogclf-efficientnet-lite {version}"
    assert spec.num_features == 1280
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5)


# --- entry points ---------------------------------------------------------------------------------------------


def test_entry_points_are_read_only_on_a_miss(fake_plugin: str) -> None:
    seam = RecordingEntryPoints([_ep("othernet", f"{fake_plugin}:othernet")])

    registry = BackboneRegistry(entry_points=seam)
    assert seam.calls == []
    assert fake_plugin not in sys.modules

    assert registry.get("resnet18").name == "resnet18"
    assert seam.calls == []
    assert fake_plugin not in sys.modules

    spec = registry.get("othernet")
    assert seam.calls == [ENTRY_POINT_GROUP]
    assert spec.name == "othernet"
    assert spec.distribution == f"entry point '{fake_plugin}:othernet'"

    with pytest.raises(UnknownBackboneError, match="othernet"):  # the listing names the plugin's backbone
        registry.get("missing")
    registry.names()
    assert seam.calls == [ENTRY_POINT_GROUP], "entry points must be read once, not on every miss"


def test_entry_points_are_read_on_listing(fake_plugin: str) -> None:
    seam = RecordingEntryPoints([_ep("othernet", f"{fake_plugin}:othernet")])
    registry = BackboneRegistry(entry_points=seam)

    assert registry.names("other*") == ["othernet"]
    assert seam.calls == [ENTRY_POINT_GROUP]


def test_custom_group_is_passed_to_the_seam() -> None:
    seam = RecordingEntryPoints([])

    BackboneRegistry(entry_points=seam, group="acme.backbones").names()

    assert seam.calls == ["acme.backbones"]


@pytest.mark.parametrize(
    ("entry_name", "attr", "expected"),
    [
        pytest.param(
            "othername",
            "misnamed",
            "returned a spec named 'not_the_entry_point_name'; it must match the entry-point name 'othername'",
            id="name-mismatch",
        ),
        pytest.param("dictnet", "not_a_spec", "expected a dogclf.BackboneSpec, got dict", id="not-a-spec"),
        pytest.param("zeronet", "zero_features", "num_features must be a positive int, got 0", id="invalid-spec"),
        pytest.param(
            "constnet",
            "NOT_CALLABLE",
            "must name a factory function returning a BackboneSpec, got int",
            id="not-callable",
        ),
        pytest.param("ghostnet", "no_such_attr", "Could not import", id="missing-attr"),
        pytest.param("raisenet", "raises", "raised RuntimeError: needs a GPU driver", id="factory-raises"),
    ],
)
def test_bad_plugin_factories_are_refused(fake_plugin: str, entry_name: str, attr: str, expected: str) -> None:
    value = f"{fake_plugin}:{attr}"
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([_ep(entry_name, value)]))

    with pytest.raises(InvalidBackboneSpecError) as excinfo:
        registry.get(entry_name)

    message = str(excinfo.value)
    assert expected in message
    assert f"entry point {entry_name} = {value}" in message  # names the offender


def test_broken_plugin_error_is_raised_again_not_forgotten(fake_plugin: str) -> None:
    seam = RecordingEntryPoints(
        [_ep("othernet", f"{fake_plugin}:othernet"), _ep("othername", f"{fake_plugin}:misnamed")]
    )
    registry = BackboneRegistry(entry_points=seam)

    for _ in range(2):  # the second lookup must not answer "Unknown backbone" with a half-loaded registry
        with pytest.raises(InvalidBackboneSpecError, match="must match the entry-point name 'othername'"):
            registry.get("othernet")

    assert seam.calls == [ENTRY_POINT_GROUP, ENTRY_POINT_GROUP]
    assert registry.get("resnet18").name == "resnet18"  # built-ins still work


def test_plugin_whose_import_fails_reports_the_cause(plugin_module: Callable[[str, str], str]) -> None:
    module = plugin_module("dogclf_brokenplugin", "import dogclf_dependency_not_installed_xyz\n")
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([_ep("brokennet", f"{module}:factory")]))

    with pytest.raises(InvalidBackboneSpecError) as excinfo:
        registry.get("brokennet")

    message = str(excinfo.value)
    assert message.startswith(f"Could not import plugin entry point '{module}:factory'")
    assert "ModuleNotFoundError" in message
    assert "dogclf_dependency_not_installed_xyz" in message
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)


def test_plugin_clashing_with_a_builtin_names_both(tmp_path: Path, fake_plugin: str) -> None:
    entry_points = _dist_entry_points(tmp_path, {"dogclf-evil 1.0": {"resnet18": f"{fake_plugin}:othernet"}})
    registry = BackboneRegistry(entry_points=RecordingEntryPoints(entry_points))

    with pytest.raises(DuplicateBackboneError) as excinfo:
        registry.names()

    message = str(excinfo.value)
    assert "Plugin dogclf-evil 1.0 provides backbone 'resnet18'" in message
    assert "dogclf (built-in) already has that name" in message
    assert registry.get("resnet18").distribution == "dogclf (built-in)"  # the built-in was not shadowed


def test_plugin_clashing_with_a_registered_backbone_is_refused(fake_plugin: str) -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([_ep("othernet", f"{fake_plugin}:othernet")]))
    registry.register(_tiny("othernet"), source="my_notebook")

    with pytest.raises(DuplicateBackboneError, match="but my_notebook already has that name"):
        registry.names()


def test_two_plugins_with_one_name_name_both_distributions(tmp_path: Path, fake_plugin: str) -> None:
    entry_points = _dist_entry_points(
        tmp_path,
        {
            "dogclf-alpha 1.0": {"othernet": f"{fake_plugin}:othernet"},
            "dogclf-beta 2.3": {"othernet": f"{fake_plugin}:othernet"},
        },
    )
    assert len(entry_points) == 2
    registry = BackboneRegistry(entry_points=RecordingEntryPoints(entry_points))

    with pytest.raises(DuplicateBackboneError) as excinfo:
        registry.get("othernet")

    message = str(excinfo.value)
    assert "Two installed plugins provide backbone 'othernet'" in message
    assert "dogclf-alpha 1.0" in message
    assert "dogclf-beta 2.3" in message
    assert "Uninstall one of them" in message


def test_real_entry_point_records_the_distribution(tiny_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tiny_plugin_dir))
    monkeypatch.delitem(sys.modules, "dogclf_tinybb", raising=False)

    try:
        registry = BackboneRegistry()  # the real importlib.metadata seam
        spec = registry.get("tinynet")
        assert "dogclf_tinybb" in sys.modules
    finally:
        sys.modules.pop("dogclf_tinybb", None)

    assert spec.distribution == "dogclf-tinybb 0.1"
    assert spec.num_features == 16
    assert registry.get("efficientnet_lite0").distribution.startswith("dogclf-efficientnet-lite ")


# --- timm/<model> ---------------------------------------------------------------------------------------------


def test_timm_name_takes_preprocessing_from_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))

    spec = registry.get("timm/test_efficientnet")

    assert spec.name == "timm/test_efficientnet"
    assert spec.num_features == 256
    # timm's pretrained_cfg: input (3, 160, 160), crop_pct 0.95 -> resize floor(160 / 0.95) = 168, bicubic.
    assert spec.preprocessing == Preprocessing(
        input_size=160, resize_size=168, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )
    assert spec.distribution.startswith("timm ")
    assert spec.classifier_prefixes == ("classifier.",)
    module = spec.build(pretrained=False, progress=False).eval()
    with torch.no_grad():
        assert module(torch.zeros(1, 3, 64, 64)).shape == (1, 256)


def test_unknown_timm_model_is_an_unknown_backbone() -> None:
    registry = BackboneRegistry(entry_points=RecordingEntryPoints([]))

    with pytest.raises(UnknownBackboneError) as excinfo:
        registry.get("timm/nonexistent_xyz")

    assert "timm has no model 'nonexistent_xyz' (asked for backbone 'timm/nonexistent_xyz')" in str(excinfo.value)


# --- import cost ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import dogclf",
        "import dogclf; dogclf.get_backbone('resnet18'); dogclf.BackboneRegistry()",
    ],
    ids=["import", "builtin-lookup"],
)
def test_import_and_builtin_lookup_do_no_heavy_work(code: str) -> None:
    probe = f"{code}; import sys; print('torch' in sys.modules, 'torchvision' in sys.modules, 'timm' in sys.modules)"

    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]
