"""A model directory is checked on load: every config.json field, the weights against it; JSON out is always JSON.

The property-based tests mutate a real ``config.json`` and real request bodies with hypothesis and require one of
two outcomes: a dogclf error that names the problem, or a valid answer (finite scores, strict JSON). Never a crash.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import _tiny_namespace, dogclf_command, jpeg, plugin_environ, run_cli, train_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import dogclf
from dogclf.backbones import registry as registry_module
from dogclf.backbones.registry import default_registry
from dogclf.errors import DogclfError, ModelDirError
from dogclf.serving import handlers
from dogclf.serving.package import package_model


def _outcome(call: Any) -> tuple[Any, Exception | None]:
    """``(result, None)``, or ``(None, the exception)`` it raised."""
    try:
        return call(), None
    except Exception as exc:
        return None, exc


def _strict_json(text: str) -> Any:
    """Parses JSON and refuses NaN/Infinity, which Python's json would otherwise accept."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in JSON output: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tinynet model directory (3 classes, linear head, calibrated: 51 valid images)."""
    _, model = train_tiny_model(tmp_path_factory.mktemp("checks"), per_split=(8, 17, 0), epochs=2)
    assert "calibration" in json.loads((model / "config.json").read_text())
    return model


@pytest.fixture
def edited(model_dir: Path, tmp_path: Path) -> Any:
    """``edit(change)``: a copy of the model directory whose config.json ``change(config)`` has modified."""

    def edit(change: Any) -> Path:
        target = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model_dir, target)
        config = json.loads((target / "config.json").read_text())
        change(config)
        (target / "config.json").write_text(json.dumps(config))
        return target

    return edit


def _set(path: str, value: Any) -> Any:
    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return change


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("calibration.temperature", 0, r"calibration\.temperature must be a finite number in \[0\.001, 1000\], got 0"),
        ("calibration.temperature", -1.5, r"calibration\.temperature must be a finite number in \[0\.001, 1000\]"),
        ("calibration.temperature", 1e-40, r"calibration\.temperature must be a finite number in .*, got 1e-40"),
        ("calibration.temperature", 1e300, r"calibration\.temperature must be a finite number in .*, got 1e\+300"),
        (
            "calibration.unknown_threshold",
            -0.5,
            r"calibration\.unknown_threshold must be a finite number >= 0 or null, got -0\.5",
        ),
        ("class_names", ["a", "b", "c", "d"], r"class_names has 4 entries, but the head in .* has 3 outputs"),
        ("class_names", ["a", "a", "b"], r"class_names lists 'a' more than once"),
        ("class_names", "beagle", r"class_names must be a list of non-empty strings"),
        ("class_folders", ["x", "y"], r"class_folders has 2 entries but class_names has 3"),
        ("num_classes", 5, r"num_classes is 5 but class_names has 3 entries"),
        ("num_features", 0, r"num_features must be an integer >= 1, got 0"),
        ("num_features", 32, r"num_features is 32, but the head in .* takes 16"),
        ("format_version", "1", r"format_version must be an integer >= 1, got '1'"),
        ("format_version", 99, r"has model format 99, newer than this dogclf reads \(1\); upgrade dogclf"),
        ("preprocessing.std", [0.25, 0, 0.25], r"preprocessing\.std must be three positive finite numbers"),
        ("preprocessing.input_size", 100000, r"preprocessing\.input_size must be an integer from 8 to 4096"),
        ("preprocessing.resize_size", 16, r"preprocessing\.resize_size \(16\) must be >= input_size \(32\)"),
        ("preprocessing.interpolation", "lanczos", r"preprocessing\.interpolation must be one of"),
        ("head.hidden", -1, r"head\.hidden must be an integer|head is not a valid head"),
        ("head.dropout", "0.5", r"head\.dropout must be a float, got '0\.5'"),
        ("head.width", 8, r"head\.width is not a head setting \(known: hidden, dropout"),
        ("head.hidden", 64, r"head \{'hidden': 64, 'dropout': 0\.0\} describes layers head\.0\.bias, .* but"),
        (
            "training.valid_fraction",
            20,
            r"training\.valid_fraction must be a finite number in \[0, 1\] or null, got 20",
        ),
        ("backbone", "", r"backbone must be a backbone name"),
        ("metrics", [], r"metrics must be a JSON object"),
        ("novelty.k", 0, r"novelty\.k must be an integer >= 1, got 0"),
        ("novelty.threshold", "0.2", r"novelty\.threshold must be a finite number or null, got '0\.2'"),
        ("novelty.file", "../model.safetensors", r"novelty\.file must be a file name inside the model directory"),
        ("novelty", ["knn"], r"novelty must be a JSON object"),
        ("files", [], r"files must be a JSON object of file names"),
        ("novelty.scales", {"knn": [0.1, 0]}, r"novelty\.scales must map each score to \[centre, spread > 0\]"),
        ("novelty.temperature", -1, r"novelty\.temperature must be a finite number > 0 or null, got -1"),
    ],
)
def test_a_bad_config_field_is_an_error_naming_the_key(
    edited: Any, tiny_spec: Any, key: str, value: Any, message: str
) -> None:
    target = edited(_set(key, value))

    with pytest.raises(ModelDirError, match=message) as info:
        dogclf.load_model(target)

    assert str(target) in str(info.value)


def test_nan_in_config_json_is_not_read_as_a_number(edited: Any, tiny_spec: Any) -> None:
    target = edited(lambda c: None)
    text = (target / "config.json").read_text().replace('"temperature": ', '"temperature": NaN, "was": ', 1)
    (target / "config.json").write_text(text)

    with pytest.raises(ModelDirError, match="is not valid JSON: NaN is not a JSON number"):
        dogclf.load_model(target)


def test_weights_with_nan_are_refused_naming_the_tensor(model_dir: Path, tiny_spec: Any, tmp_path: Path) -> None:
    target = shutil.copytree(model_dir, tmp_path / "nan")
    state = load_file(str(target / "model.safetensors"))
    state["head.0.weight"][0, 0] = float("nan")
    save_file(state, str(target / "model.safetensors"))

    with pytest.raises(ModelDirError, match=r"hold NaN or infinite values \(head\.0\.weight\)"):
        dogclf.load_model(target)


def test_cli_with_a_broken_config_prints_one_line_not_nan_json(
    edited: Any, tiny_plugin_dir: Path, tmp_path: Path
) -> None:
    target = edited(_set("calibration.temperature", 0))
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(3))

    done = subprocess.run(
        [*dogclf_command(), "predict", "--model", str(target), str(photo), "--json"],
        env=plugin_environ(tiny_plugin_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("dogclf predict: error: ")
    assert "calibration.temperature must be a finite number in [0.001, 1000], got 0" in done.stderr
    assert done.stderr.count("\n") == 1


def _save(spec: Any, out: Path, *, seed: int, temperature: float) -> Path:
    from dogclf.artifact import save_model
    from dogclf.data.folder import ClassInfo
    from dogclf.model import HeadConfig, build_model

    torch.manual_seed(seed)
    net = build_model(spec, 3, weights=None, head=HeadConfig()).eval()
    classes = [ClassInfo(f"c{i}", f"Breed {i}") for i in range(3)]
    calibration = {"temperature": temperature}
    return save_model(net, out, spec=spec, classes=classes, head=HeadConfig().to_dict(), calibration=calibration)


def test_a_save_that_stopped_between_its_renames_is_refused_not_loaded_with_the_old_config(
    tiny_spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    out = _save(tiny_spec, tmp_path / "model", seed=0, temperature=1.0)
    assert dogclf.load_model(out).temperature == 1.0
    real_replace = os.replace

    def crash_before_the_config(src: Any, dst: Any) -> None:
        if Path(dst).name == "config.json":
            raise KeyboardInterrupt  # the process dies here: new weights in place, config.json still the old one
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        _save(tiny_spec, out, seed=1, temperature=2.5)
    monkeypatch.undo()

    with pytest.raises(
        ModelDirError, match=r"model\.safetensors' is not the file .*config\.json' was saved with"
    ) as info:
        dogclf.load_model(out)
    assert "mixes two saves" in str(info.value)

    _save(tiny_spec, out, seed=1, temperature=2.5)  # a save that completes puts it right
    assert dogclf.load_model(out).temperature == 2.5


def test_config_json_records_the_digest_of_each_file_it_was_saved_with(model_dir: Path) -> None:
    import hashlib

    files = json.loads((model_dir / "config.json").read_text())["files"]

    assert sorted(files) == ["model.safetensors", "novelty.safetensors"]
    for name, entry in files.items():
        data = (model_dir / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"bytes": 1}, r"files\.model\.safetensors\.sha256 must be 64 lower-case hex digits, got None"),
        ({"bytes": -1, "sha256": "0" * 64}, r"files\.model\.safetensors\.bytes must be an integer >= 0, got -1"),
    ],
)
def test_a_malformed_manifest_entry_is_an_error_naming_it(
    edited: Any, tiny_spec: Any, entry: dict[str, Any], message: str
) -> None:
    target = edited(lambda config: config["files"].update({"model.safetensors": entry}))

    with pytest.raises(ModelDirError, match=message):
        dogclf.load_model(target)


def test_a_novelty_file_from_another_save_is_refused(model_dir: Path, tiny_spec: Any, tmp_path: Path) -> None:
    target = shutil.copytree(model_dir, tmp_path / "mixed")
    data = bytearray((target / "novelty.safetensors").read_bytes())
    data[-1] ^= 1  # same size, one bit of the feature bank differs
    (target / "novelty.safetensors").write_bytes(bytes(data))

    with pytest.raises(ModelDirError, match=r"novelty\.safetensors' is not the file .* \(SHA-256 [0-9a-f]{12}\.\.\."):
        dogclf.load_model(target)


def test_a_deeply_nested_config_json_is_one_line_error_not_a_traceback(
    edited: Any, tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = edited(lambda c: None)
    (target / "config.json").write_text('{"class_names": ' + "[" * 100_000 + "]" * 100_000 + "}")
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(3))

    code, out, err = run_cli(["predict", "--model", str(target), str(photo), "--json"], capsys)

    assert code == 2
    assert out == ""
    assert err.startswith(f"dogclf predict: error: {str(target / 'config.json')!r} is not a dogclf config")
    assert "nested too deeply" in err
    assert err.count("\n") == 1


# --- property-based: mutated config.json ---------------------------------------------------------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
)
_JSON = st.deferred(
    lambda: _JSON_SCALARS | st.lists(_JSON, max_size=3) | st.dictionaries(st.text(max_size=6), _JSON, max_size=3)  # type: ignore[has-type]
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a JSON document (dict keys and list indices), leaves and inner nodes alike."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:4]):
            found += _paths(value, (*prefix, index))
    return found


def _mutate(config: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    node: Any = config
    for key in path[:-1]:
        node = node[key]
    if action == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return config


@pytest.fixture(scope="module")
def original_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutated_config_loads_to_finite_answers_or_fails_with_a_clear_error(
    data: st.DataObject, model_dir: Path, original_config: dict[str, Any], tiny_spec: Any, tmp_path: Path
) -> None:
    paths = _paths(original_config)
    mutations = data.draw(
        st.lists(
            st.tuples(st.sampled_from(paths), st.sampled_from(["replace", "delete"]), _JSON), min_size=1, max_size=3
        )
    )
    config = original_config
    for path, action, value in mutations:
        try:
            config = _mutate(config, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path's parent
    target = tmp_path / "model"
    if not target.exists():
        shutil.copytree(model_dir, target)
    (target / "config.json").write_text(json.dumps(config))

    classifier, error = _outcome(lambda: dogclf.load_model(target))
    if error is not None:
        assert isinstance(error, DogclfError), f"{type(error).__name__}: {error}"  # the CLI prints it as one line
        assert str(error)
        return
    results = classifier.classify([jpeg(1), jpeg(2)], top_k=3)
    for result in results:
        assert all(math.isfinite(p.score) and 0.0 <= p.score <= 1.0 for p in result.predictions)
    _strict_json(json.dumps([r.to_dict() for r in results], allow_nan=False))


# --- property-based: request bodies ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[Any]:
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/artifact/test_model_dir_checks.py")  # type: ignore[operator]
    try:
        yield handlers.model_fn(str(model_dir))
    finally:
        registry.unregister("tinynet")


_IMAGE_BYTES = st.one_of(st.binary(max_size=64), st.sampled_from([jpeg(5), jpeg(6, (30, 90))]))
_B64_ITEMS = st.one_of(
    _IMAGE_BYTES.map(lambda b: base64.b64encode(b).decode()),
    _IMAGE_BYTES.map(lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode()),
    _JSON_SCALARS,
)
_JSON_BODIES = st.one_of(
    st.fixed_dictionaries(
        {"images": st.lists(_B64_ITEMS, max_size=3)}, optional={"top_k": _JSON_SCALARS, "extra": _JSON}
    ).map(json.dumps),
    _JSON.map(json.dumps),
    st.text(max_size=40),
)
_CONTENT_TYPES = st.sampled_from(
    ["application/json", "image/jpeg", "image/png", "application/x-image", "application/octet-stream", "text/plain", ""]
)


@settings(max_examples=150, deadline=None)
@given(
    content_type=_CONTENT_TYPES,
    body=st.one_of(_JSON_BODIES, _IMAGE_BYTES),
    accept=st.sampled_from(["application/json", "*/*", "text/html"]),
)
def test_any_request_body_gets_a_clear_error_or_a_strict_json_answer(
    served: Any, content_type: str, body: str | bytes, accept: str
) -> None:
    def answer() -> tuple[str, str]:
        decoded = handlers.input_fn(body, content_type)
        return handlers.output_fn(handlers.predict_fn(decoded, served), accept)

    outcome, failure = _outcome(answer)
    if failure is not None:
        error = getattr(failure, "request_error", failure)  # under the SageMaker toolkit, its error type wraps ours
        assert isinstance(error, DogclfError), f"{type(failure).__name__}: {failure}"
        assert getattr(error, "status", None) in (400, 406, 413, 415)
        return
    text, kind = outcome
    assert kind == "application/json"
    payload = _strict_json(text)
    results = payload["results"] if isinstance(payload, dict) and "results" in payload else [payload]
    for result in results:
        assert all(math.isfinite(p["score"]) for p in result["predictions"])


# --- packaging ------------------------------------------------------------------------------------------------------


def test_package_archives_the_contents_of_a_symlinked_weights_file(
    model_dir: Path, tiny_plugin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tiny_plugin_dir))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # a fresh registry: tinynet from the plugin's entry point
    store = tmp_path / "store"
    store.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("model.safetensors", "config.json", "novelty.safetensors"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, store / name)
            (linked / name).symlink_to(store / name)

    report = package_model(linked, tmp_path / "model.tar.gz")

    with tarfile.open(report.archive) as tar:
        member = tar.getmember("model.safetensors")
        assert member.isfile()
        assert not member.issym()
        assert member.size == (store / "model.safetensors").stat().st_size
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == (store / "model.safetensors").read_bytes()
        config = tar.extractfile("config.json")
        assert config is not None
        assert json.load(io.TextIOWrapper(config))["backbone"] == "tinynet"
    assert (linked / "model.safetensors").is_symlink()  # the model directory itself is left as it was
