"""Backbone weights: local files (safely), ImageNet from the provider's cache, and the offline error."""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dogclf
from dogclf._compat import import_torchvision
from dogclf.backbones.weights import build_backbone, load_state_dict_file, parse_weights, weights_label
from dogclf.errors import WeightsError, WeightsUnavailableError

RESNET18_FILE = "resnet18-f37072fd.pth"
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
# Port 9 (discard) on the loopback refuses at once: a "download" that can never leave the machine.
REFUSING_HOST = "http://127.0.0.1:9"

State = dict[str, torch.Tensor]


def _perturbed(state: State) -> State:
    """A copy in which every tensor differs from a fresh initialisation (BN statistics included)."""
    generator = torch.Generator().manual_seed(0)
    return {
        key: value + torch.rand(value.shape, generator=generator) if value.is_floating_point() else value + 3
        for key, value in state.items()
    }


@pytest.fixture(scope="module")
def resnet18_state() -> State:
    """A full torchvision resnet18 state dict, ``fc.*`` included, with non-default values everywhere."""
    return _perturbed(import_torchvision().models.resnet18(weights=None).state_dict())


@pytest.fixture(scope="module")
def resnet18_pth(resnet18_state: State, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.pth"
    torch.save(resnet18_state, path)
    return path


@pytest.fixture(scope="module")
def inception_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, State]:
    """A fake torchvision inception_v3 checkpoint, with ``AuxLogits.*`` and ``fc.*`` keys like the real one."""
    models = import_torchvision().models
    state = _perturbed(models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict())
    assert any(k.startswith("AuxLogits.") for k in state)
    assert "fc.weight" in state
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture
def offline_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, no proxies, and torchvision's weight URLs pointed at a refusing local port."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    models = import_torchvision().models
    for weights, filename in (
        (models.ResNet18_Weights.IMAGENET1K_V1, RESNET18_FILE),
        (models.Inception_V3_Weights.IMAGENET1K_V1, INCEPTION_FILE),
    ):
        monkeypatch.setattr(weights.value, "url", f"{REFUSING_HOST}/{filename}")
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert checkpoints.is_relative_to(tmp_path)
    return checkpoints


def _assert_backbone_holds(module: torch.nn.Module, state: State, *, dropped: tuple[str, ...]) -> None:
    own = module.state_dict()
    assert set(own) == {k for k in state if not k.startswith(dropped)}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


# --- local files ----------------------------------------------------------------------------------------------


def _save_pth(state: State, path: Path) -> Path:
    torch.save(state, path.with_suffix(".pth"))
    return path.with_suffix(".pth")


def _save_safetensors(state: State, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors")))
    return path.with_suffix(".safetensors")


def _save_wrapped(key: str) -> Callable[[State, Path], Path]:
    def save(state: State, path: Path) -> Path:
        torch.save({key: state, "epoch": 3, "best_acc": 0.5}, path.with_suffix(".pt"))
        return path.with_suffix(".pt")

    return save


def _save_data_parallel(state: State, path: Path) -> Path:
    torch.save({f"module.{k}": v for k, v in state.items()}, path.with_suffix(".pth"))
    return path.with_suffix(".pth")


@pytest.mark.parametrize(
    "save",
    [
        pytest.param(_save_pth, id="pth"),
        pytest.param(_save_safetensors, id="safetensors"),
        pytest.param(_save_wrapped("state_dict"), id="wrapped-state_dict"),
        pytest.param(_save_wrapped("model"), id="wrapped-model"),
        pytest.param(_save_wrapped("model_state_dict"), id="wrapped-model_state_dict"),
        pytest.param(_save_data_parallel, id="module-prefix"),
    ],
)
def test_local_weights_file_loads_into_the_backbone(
    save: Callable[[State, Path], Path], resnet18_state: State, tmp_path: Path
) -> None:
    path = save(resnet18_state, tmp_path / "weights")

    module = build_backbone(dogclf.get_backbone("resnet18"), path)

    _assert_backbone_holds(module, resnet18_state, dropped=("fc.",))
    assert isinstance(module.fc, torch.nn.Identity)


def test_string_path_is_accepted(resnet18_pth: Path, resnet18_state: State) -> None:
    module = build_backbone(dogclf.get_backbone("resnet18"), str(resnet18_pth))

    _assert_backbone_holds(module, resnet18_state, dropped=("fc.",))


def _drop_and_add(state: State) -> State:
    changed = {k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    changed["extra.weight"] = torch.zeros(3)
    return changed


def _reshape_conv1(state: State) -> State:
    return {**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        pytest.param(
            _drop_and_add,
            ["1 missing (e.g. layer4.1.bn2.weight)", "1 unexpected (e.g. extra.weight)"],
            id="missing-and-unexpected",
        ),
        pytest.param(
            _reshape_conv1, ["1 with the wrong shape (e.g. conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7))"], id="shape"
        ),
    ],
)
def test_weights_file_that_does_not_fit_is_refused(
    corrupt: Callable[[State], State], expected: list[str], resnet18_state: State, tmp_path: Path
) -> None:
    path = tmp_path / "other.pth"
    torch.save(corrupt(resnet18_state), path)

    with pytest.raises(WeightsError) as excinfo:
        build_backbone(dogclf.get_backbone("resnet18"), path)

    message = str(excinfo.value)
    assert f"Weights file '{path}' does not fit backbone 'resnet18'" in message
    for fragment in expected:
        assert fragment in message
    assert "classifier keys fc. are ignored" in message


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save({"0.weight": torch.zeros(8, 3, 3, 3)}, path)

    with pytest.raises(WeightsError, match=r"does not fit backbone 'resnet18': \d+ missing \(e\.g\. conv1\.weight"):
        build_backbone(dogclf.get_backbone("resnet18"), path)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"

    with pytest.raises(FileNotFoundError) as excinfo:
        build_backbone(dogclf.get_backbone("resnet18"), path)

    assert isinstance(excinfo.value, WeightsUnavailableError)
    message = str(excinfo.value)
    assert f"Weights file '{path}' does not exist" in message
    assert "--weights imagenet, --weights none" in message


_UNPICKLED: list[str] = []


def _record_unpickling() -> int:
    _UNPICKLED.append("code ran while loading")
    return 0


class _Payload:
    """Pickles as a call to :func:`_record_unpickling`: loading it would run code."""

    def __reduce__(self) -> tuple[Callable[[], int], tuple[()]]:
        return (_record_unpickling, ())


def test_pickle_with_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    _UNPICKLED.clear()

    with pytest.raises(WeightsError) as excinfo:
        load_state_dict_file(path)

    assert _UNPICKLED == []
    message = str(excinfo.value)
    assert f"Could not read weights file '{path}' safely" in message
    assert "weights_only=True" in message
    assert "_record_unpickling" in message  # torch names the refused global


@pytest.mark.parametrize(
    ("filename", "write", "expected"),
    [
        pytest.param("w.pth", lambda p: torch.save([torch.zeros(2)], p), "does not hold a state dict", id="list"),
        pytest.param(
            "w.pth", lambda p: torch.save({"a": torch.zeros(2), "n": 3}, p), "does not hold a state dict", id="int"
        ),
        pytest.param("w.pth", lambda p: p.write_bytes(b"not a checkpoint"), "Could not read weights file", id="junk"),
        pytest.param(
            "w.safetensors", lambda p: p.write_bytes(b"\x00" * 16), "Could not read weights file", id="safetensors"
        ),
    ],
)
def test_unreadable_weights_files(
    filename: str, write: Callable[[Path], object], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / filename
    write(path)

    with pytest.raises(WeightsError, match=expected):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("imagenet", "imagenet"),
        (" ImageNet ", "imagenet"),
        ("none", None),
        ("NONE", None),
        ("random", None),
        ("", None),
        (None, None),
        ("weights/r18.pth", Path("weights/r18.pth")),
        ("~/r18.pth", Path.home() / "r18.pth"),
        (Path("imagenet"), Path("imagenet")),  # a Path is always a file, even one called "imagenet"
    ],
)
def test_parse_weights(value: str | Path | None, expected: object) -> None:
    assert parse_weights(value) == expected


@pytest.mark.parametrize(
    ("value", "label"),
    [("imagenet", "imagenet"), ("none", "none"), ("NONE", "none"), (None, "none"), ("w/r18.pth", "w/r18.pth")],
)
def test_weights_label_is_the_same_for_equivalent_choices(value: str | None, label: str) -> None:
    # The label goes into config.json and the resume fingerprint: "none" and None must not differ there.
    assert weights_label(value) == label


def test_weights_none_touches_neither_network_nor_cache(offline_torch_home: Path) -> None:
    module = build_backbone(dogclf.get_backbone("resnet18"), "none")

    assert isinstance(module.fc, torch.nn.Identity)
    assert not offline_torch_home.exists()


# --- ImageNet weights -----------------------------------------------------------------------------------------


def test_imagenet_offline_says_what_to_do(offline_torch_home: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as excinfo:
        build_backbone(dogclf.get_backbone("resnet18"), "imagenet", progress=False)

    message = str(excinfo.value)
    assert "Could not get the pretrained ImageNet weights for backbone 'resnet18'" in message
    assert f"The file {RESNET18_FILE} is not in the cache folder {offline_torch_home}" in message
    assert f"--weights /path/to/{RESNET18_FILE}" in message
    assert "--weights none" in message
    assert "URLError" in message
    assert isinstance(excinfo.value.__cause__, OSError)
    assert not (offline_torch_home / RESNET18_FILE).exists()


def test_imagenet_weights_copied_into_the_cache_load_offline(
    offline_torch_home: Path, resnet18_pth: Path, resnet18_state: State
) -> None:
    """The offline message's advice works: a file copied into the cache folder is used, nothing is fetched."""
    offline_torch_home.mkdir(parents=True)
    (offline_torch_home / RESNET18_FILE).write_bytes(resnet18_pth.read_bytes())

    module = build_backbone(dogclf.get_backbone("resnet18"), "imagenet", progress=False)

    _assert_backbone_holds(module, resnet18_state, dropped=("fc.",))


def test_backbone_without_pretrained_weights(tiny_spec: dogclf.BackboneSpec) -> None:
    with pytest.raises(WeightsUnavailableError) as excinfo:
        build_backbone(tiny_spec, "imagenet")

    message = str(excinfo.value)
    assert "Backbone 'tinynet' has no pretrained ImageNet weights" in message
    assert "--weights none" in message


def _raiser(exc: BaseException) -> Callable[..., torch.nn.Module]:
    def build(*, pretrained: bool = False, progress: bool = True) -> torch.nn.Module:
        raise exc

    return build


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(urllib.error.URLError("[Errno 111] Connection refused"), WeightsUnavailableError, id="urlerror"),
        pytest.param(TimeoutError("timed out"), WeightsUnavailableError, id="timeout"),
        pytest.param(RuntimeError("Failed to download from the hub"), WeightsUnavailableError, id="download-runtime"),
        pytest.param(
            RuntimeError("Error(s) in loading state_dict: size mismatch for conv1.weight"), RuntimeError, id="bug"
        ),
        pytest.param(KeyError("layer9"), KeyError, id="keyerror"),
    ],
)
def test_only_download_failures_become_weights_unavailable(exc: BaseException, expected: type[Exception]) -> None:
    spec = dataclasses.replace(dogclf.get_backbone("resnet18"), build=_raiser(exc))

    with pytest.raises(expected) as excinfo:
        build_backbone(spec, "imagenet")

    if expected is WeightsUnavailableError:
        assert excinfo.value.__cause__ is exc
        assert RESNET18_FILE in str(excinfo.value)
    else:
        assert excinfo.value is exc  # a real bug is not disguised as a download problem


# --- inception_v3 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["none", "file", "imagenet-cache"])
def test_inception_is_one_graph_with_and_without_weights(
    weights: str, inception_pth: tuple[Path, State], offline_torch_home: Path
) -> None:
    path, state = inception_pth
    spec = dogclf.get_backbone("inception_v3")
    if weights == "imagenet-cache":
        offline_torch_home.mkdir(parents=True)
        os.symlink(path, offline_torch_home / INCEPTION_FILE)
    choice = {"none": None, "file": path, "imagenet-cache": "imagenet"}[weights]

    module = build_backbone(spec, choice, progress=False)

    assert module.transform_input is True
    assert module.AuxLogits is None
    assert isinstance(module.fc, torch.nn.Identity)
    if weights != "none":
        _assert_backbone_holds(module, state, dropped=("fc.", "AuxLogits."))
    module.train()
    out = module(torch.randn(2, 3, 80, 80))
    assert type(out) is torch.Tensor
    assert out.shape == (2, 2048)
