"""Training, callbacks, checkpoints and resume, the model directory, loading, predicting and evaluating."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import _tiny_namespace
from PIL import Image
from safetensors.torch import load_file

import dogclf
from dogclf.backbones.registry import default_registry
from dogclf.data.folder import load_splits
from dogclf.errors import ModelDirError
from dogclf.training.callbacks import Callback, TrainState, format_epoch_line

EPOCH_LINE = re.compile(r"^epoch=(\d+) train_loss=([0-9.]+) valid_loss=([0-9.]+) valid_top1=([0-9.]+)")


def _config(epochs: int = 2, **changes: Any) -> dogclf.TrainConfig:
    # The epoch loop: these tests are about epochs, callbacks and checkpoints (the L-BFGS head has its own tests).
    settings: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": 8,
        "num_workers": 0,
        "device": "cpu",
        "head_solver": "loop",
        **changes,
    }
    return dogclf.TrainConfig(**settings)


def _train(data: Path, out: Path, epochs: int = 2, **kwargs: Any) -> dogclf.TrainResult:
    config = kwargs.pop("config", None) or _config(epochs)
    return dogclf.train(data, "tinynet", out, config=config, weights=None, progress=False, **kwargs)


def _without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data_dir, model_dir)`` of one 2-epoch run on a tiny tree, shared by the read-only tests of this module.

    Tests that load the model also request ``tiny_spec`` so that ``tinynet`` is registered while they run.
    """
    root = tmp_path_factory.mktemp("trained")
    data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=(8, 3, 3), size=40, seed=1)
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/training/test_training.py")  # type: ignore[operator]
    try:
        _train(data, root / "model")
    finally:
        registry.unregister("tinynet")
    return data, root / "model"


def _copy_model(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


# --- the log line ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (
            {
                "epoch": 3.0,
                "train_loss": 0.81234,
                "valid_loss": 0.9034,
                "valid_top1": 0.75,
                "train_top1": 0.8,
                "seconds": 12.34,
            },
            "epoch=3 train_loss=0.8123 valid_loss=0.9034 valid_top1=0.7500 train_top1=0.8000 seconds=12.3",
        ),
        (
            # no validation split: nan, keys still in the same order
            {
                "epoch": 1.0,
                "train_loss": 1.5,
                "valid_loss": float("nan"),
                "valid_top1": float("nan"),
                "train_top1": 0.25,
                "seconds": 0.04,
            },
            "epoch=1 train_loss=1.5000 valid_loss=nan valid_top1=nan train_top1=0.2500 seconds=0.0",
        ),
        (
            {"epoch": 12, "train_loss": 0.1, "seconds": 1.0},
            "epoch=12 train_loss=0.1000 valid_loss=nan valid_top1=nan train_top1=nan seconds=1.0",
        ),
    ],
)
def test_epoch_line_has_fixed_keys_order_and_precision(metrics: dict[str, float], expected: str) -> None:
    assert format_epoch_line(metrics) == expected


def test_training_logs_one_parseable_line_per_epoch_and_prints_nothing(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    capsys: pytest.CaptureFixture[str],
    dogclf_log: list[str],
) -> None:
    result = _train(tiny_tree, tmp_path / "model", epochs=3)

    assert capsys.readouterr().out == ""  # a library call prints nothing: the application's logging decides
    matches = [EPOCH_LINE.match(line) for line in dogclf_log]
    lines = [m for m in matches if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3]
    for match, epoch in zip(lines, result.history, strict=True):
        assert float(match.group(2)) == pytest.approx(epoch["train_loss"], abs=1e-4)
        assert float(match.group(3)) == pytest.approx(epoch["valid_loss"], abs=1e-4)
        assert float(match.group(4)) == pytest.approx(epoch["valid_top1"], abs=1e-4)
        assert 0.0 <= epoch["valid_top1"] <= 1.0


# --- callbacks -------------------------------------------------------------------------------------------------------


class Recorder(Callback):
    """Records every hook call as ``(hook, epoch)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.checkpoint_at_epoch_end: list[bool] = []
        self.grads_set: list[bool] = []
        self.model: torch.nn.Module | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.calls.append(("on_train_start", state.epoch))

    def on_epoch_start(self, state: TrainState) -> None:
        self.calls.append(("on_epoch_start", state.epoch))

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        self.calls.append(("on_after_backward", state.epoch))
        head_grads = [p.grad for p in state.model.head.parameters()]  # type: ignore[union-attr]
        self.grads_set.append(all(g is not None for g in head_grads) and loss.requires_grad)

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        self.calls.append(("on_batch_end", state.epoch))

    def on_eval_start(self, state: TrainState) -> None:
        self.calls.append(("on_eval_start", state.epoch))

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        self.calls.append(("on_eval_batch_end", state.epoch))

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        self.calls.append(("on_epoch_end", state.epoch))
        self.checkpoint_at_epoch_end.append(int(metrics["epoch"]) == state.epoch)

    def on_train_end(self, state: TrainState) -> None:
        self.calls.append(("on_train_end", state.epoch))
        self.model = state.model


def test_callbacks_are_called_in_order_with_the_right_counts(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    recorder = Recorder()

    _train(tiny_tree, tmp_path / "model", epochs=2, callbacks=[recorder])

    # 3 classes x 8 train images at batch 8: 3 batches; 9 valid images: 2 eval batches.
    def epoch(n: int) -> list[tuple[str, int]]:
        return [
            ("on_epoch_start", n),
            *[("on_after_backward", n), ("on_batch_end", n)] * 3,
            ("on_eval_start", n),
            *[("on_eval_batch_end", n)] * 2,
            ("on_epoch_end", n),
        ]

    assert recorder.calls == [("on_train_start", 0), *epoch(1), *epoch(2), ("on_train_end", 2)]
    assert all(recorder.grads_set)
    assert recorder.checkpoint_at_epoch_end == [True, True]


def test_callback_can_stop_training_early(tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    class StopAfterOne(Callback):
        def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
            state.stop = True

    result = _train(tiny_tree, tmp_path / "model", epochs=5, callbacks=[StopAfterOne()])

    assert [int(h["epoch"]) for h in result.history] == [1]
    assert (result.model_dir / "model.safetensors").is_file()


# --- the model directory ---------------------------------------------------------------------------------------------


def test_model_dir_holds_weights_and_a_self_describing_config(trained: tuple[Path, Path]) -> None:
    _, model_dir = trained

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    weights = load_file(str(model_dir / "model.safetensors"))

    assert config["backbone"] == "tinynet"
    assert config["class_names"] == ["Synthetic red discs", "Synthetic blue stripes", "Synthetic green squares"]
    assert config["class_folders"] == [
        "001.Synthetic_red_discs",
        "002.Synthetic_blue_stripes",
        "003.Synthetic_green_squares",
    ]
    assert config["num_classes"] == 3
    assert config["num_features"] == 16
    assert config["preprocessing"] == {
        "input_size": 32,
        "resize_size": 36,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
    }
    assert config["head"] == {"hidden": 0, "dropout": 0.0}
    assert config["dogclf_version"] == dogclf.__version__
    assert [int(h["epoch"]) for h in config["metrics"]["history"]] == [1, 2]
    assert config["metrics"]["final"] == config["metrics"]["history"][-1]
    assert set(config["metrics"]["test"]) >= {"top1", "top5", "n"}
    assert config["metrics"]["test"]["n"] == 9
    assert config["training"]["lr"] == 1e-3
    assert config["training"]["weights"] == "none"
    assert weights["head.0.weight"].shape == (3, 16)
    # Readable by a server running as another user (safetensors alone would create it owner-only).
    assert (model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044
    assert any(key.startswith("backbone.") for key in weights)


def test_loaded_model_gives_the_same_logits_as_the_trained_one(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    recorder = Recorder()
    result = _train(tiny_tree, tmp_path / "model", epochs=1, callbacks=[recorder])
    assert recorder.model is not None
    classifier = dogclf.load_model(result.model_dir)
    batch = classifier.preprocess([s.path for s in result.splits.valid])

    trained_model = recorder.model.eval()
    with torch.inference_mode():
        expected = trained_model(batch)
        actual = classifier.net(batch)

    assert torch.allclose(actual, expected, atol=1e-6)
    assert classifier.class_names == result.splits.class_names
    assert not classifier.net.training


def test_loading_needs_no_pickle_and_no_pretrained_weights(
    trained: tuple[Path, Path], tiny_spec: dogclf.BackboneSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model_dir = trained
    builds: list[bool] = []

    def recording_build(*, pretrained: bool = False, progress: bool = True) -> torch.nn.Module:
        builds.append(pretrained)
        return tiny_spec.build(pretrained=False, progress=progress)

    default_registry().register(dataclasses.replace(tiny_spec, build=recording_build), override=True)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a model directory must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)

    classifier = dogclf.load_model(model_dir)

    assert builds == [False]
    assert len(classifier.predict(Image.new("RGB", (40, 40), "red"))[0]) == 3


@pytest.mark.parametrize(
    ("remove", "missing"),
    [
        (["config.json"], "missing config.json"),
        (["model.safetensors"], "missing model.safetensors"),
        (["config.json", "model.safetensors"], "missing config.json, model.safetensors"),
    ],
)
def test_model_dir_missing_files_is_an_error_naming_them(
    trained: tuple[Path, Path], tmp_path: Path, tiny_spec: dogclf.BackboneSpec, remove: list[str], missing: str
) -> None:
    model_dir = _copy_model(trained[1], tmp_path)
    for name in remove:
        (model_dir / name).unlink()

    with pytest.raises(ModelDirError, match=r"is not a dogclf model directory: " + re.escape(missing)) as info:
        dogclf.load_model(model_dir)
    # The run's checkpoint is still there: the message says how to finish the run.
    assert "--resume" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), r"Model directory .* does not exist"),
        (lambda d: (d / "config.json").write_text("{oops"), r"config\.json' is not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"format_version": 1}'), r"lacks keys: backbone, class_names"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), r"Cannot read weights .*model\.safetensors"),
        (
            lambda d: (d / "config.json").write_text(
                (d / "config.json").read_text().replace('"backbone": "tinynet"', '"backbone": "gonenet"')
            ),
            r"uses backbone 'gonenet' .*which is not installed here",
        ),
    ],
    ids=["no-dir", "bad-json", "missing-keys", "bad-weights", "unknown-backbone"],
)
def test_broken_model_dir_is_an_error_saying_what_is_wrong(
    trained: tuple[Path, Path], tmp_path: Path, tiny_spec: dogclf.BackboneSpec, damage: Any, message: str
) -> None:
    model_dir = _copy_model(trained[1], tmp_path)
    damage(model_dir)

    with pytest.raises(ModelDirError, match=message):
        dogclf.load_model(model_dir)


# --- out dir, resume -------------------------------------------------------------------------------------------------


def test_existing_model_in_out_dir_is_an_error_suggesting_resume_or_overwrite(
    trained: tuple[Path, Path], tmp_path: Path, tiny_spec: dogclf.BackboneSpec
) -> None:
    data, model_dir = trained
    model_dir = _copy_model(model_dir, tmp_path)
    before = (model_dir / "model.safetensors").read_bytes()

    with pytest.raises(ModelDirError, match=r"already holds model\.safetensors, config\.json, checkpoint\.pt") as info:
        _train(data, model_dir)
    assert "--resume" in str(info.value)
    assert "--overwrite" in str(info.value)
    assert (model_dir / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("changes", "difference"),
    [
        ({"config": _config(2, lr=0.01)}, "lr: checkpoint 0.001 vs now 0.01"),
        ({"config": _config(2, batch_size=4)}, "batch_size: checkpoint 8 vs now 4"),
        ({"freeze": False}, "freeze: checkpoint True vs now False"),
    ],
    ids=["lr", "batch-size", "freeze"],
)
def test_resume_with_different_settings_is_an_error_naming_the_difference(
    trained: tuple[Path, Path],
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    changes: dict[str, Any],
    difference: str,
) -> None:
    data, model_dir = trained
    model_dir = _copy_model(model_dir, tmp_path)

    with pytest.raises(ModelDirError, match=r"is from a different run") as info:
        _train(data, model_dir, resume=True, **changes)
    assert difference in str(info.value)
    assert "only --epochs may grow" in str(info.value)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    with pytest.raises(ModelDirError, match=r"--resume was given but .*checkpoint\.pt' does not exist"):
        _train(tiny_tree, tmp_path / "fresh", resume=True)


class InterruptAfter(Callback):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the end of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("changes", "head"),
    [
        pytest.param({}, dogclf.HeadConfig(), id="in-process-loading"),
        # Worker processes, random augmentation and head dropout all draw random numbers: resume must replay them.
        pytest.param({"num_workers": 1, "augment": True}, dogclf.HeadConfig(dropout=0.3), id="workers-augment-dropout"),
    ],
)
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    changes: dict[str, Any],
    head: dogclf.HeadConfig,
    dogclf_log: list[str],
) -> None:
    # lr high enough that the head moves visibly each epoch, so a lost or repeated epoch would show.
    config = _config(4, lr=0.05, **changes)
    straight = _train(tiny_tree, tmp_path / "straight", config=config, head=head)

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_tree, tmp_path / "resumed", config=config, head=head, callbacks=[InterruptAfter(2)])
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    dogclf_log.clear()
    resumed = dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "resumed",
        config=config,
        weights=None,
        head=head,
        progress=False,
        resume=True,
    )

    logged = [int(m.group(1)) for m in map(EPOCH_LINE.match, dogclf_log) if m]
    assert logged == [3, 4]
    assert any("after epoch 2 of 4" in m for m in dogclf_log)
    assert _without_seconds(resumed.history) == _without_seconds(straight.history)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    one_epoch = _train(tiny_tree, tmp_path / "one", config=dataclasses.replace(config, epochs=1), head=head)
    c = load_file(str(one_epoch.model_dir / "model.safetensors"))
    key = next(k for k in a if k.startswith("head.") and k.endswith("weight"))
    assert not torch.equal(a[key], c[key])  # the comparison above is not vacuous


# --- predict and evaluate --------------------------------------------------------------------------------------------


def test_predict_ranks_classes_and_accepts_paths_bytes_and_images(
    trained: tuple[Path, Path], tiny_spec: dogclf.BackboneSpec
) -> None:
    data, model_dir = trained
    classifier = dogclf.load_model(model_dir)
    path = next((data / "test" / "002.Synthetic_blue_stripes").iterdir())

    with Image.open(path) as opened:
        as_image = opened.copy()
    by_path, by_bytes, by_image = classifier.predict([path, path.read_bytes(), as_image], top_k=3)
    top2 = classifier.predict(path, top_k=2)[0]
    capped = classifier.predict(str(path), top_k=50)[0]

    assert [p.label for p in by_path] == [p.label for p in by_bytes] == [p.label for p in by_image]
    assert [p.score for p in by_path] == pytest.approx([p.score for p in by_bytes], abs=1e-6)
    assert [p.score for p in by_path] == sorted((p.score for p in by_path), reverse=True)
    assert sum(p.score for p in by_path) == pytest.approx(1.0, abs=1e-5)  # all 3 classes
    assert sorted(p.index for p in by_path) == [0, 1, 2]
    assert all(classifier.class_names[p.index] == p.label for p in by_path)
    assert [p.index for p in top2] == [p.index for p in by_path[:2]]
    assert [p.score for p in top2] == pytest.approx([p.score for p in by_path[:2]], abs=1e-6)
    assert len(capped) == 3
    assert set(top2[0].to_dict()) == {"label", "score", "index"}


def test_predict_in_batches_gives_the_same_answers_as_one_by_one(
    trained: tuple[Path, Path], tiny_spec: dogclf.BackboneSpec
) -> None:
    data, model_dir = trained
    classifier = dogclf.load_model(model_dir)
    paths = sorted((data / "test").glob("*/*.jpg"))[:5]

    batched = classifier.predict(paths, top_k=2, batch_size=2)  # batches of 2, 2 and 1
    single = [classifier.predict(p, top_k=2)[0] for p in paths]

    assert len(batched) == len(paths)
    for got, want in zip(batched, single, strict=True):
        assert [p.index for p in got] == [p.index for p in want]
        assert [p.score for p in got] == pytest.approx([p.score for p in want], abs=1e-5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        classifier.predict(paths, batch_size=0)


@pytest.mark.parametrize("top_k", [0, -1, 2.5])
def test_predict_rejects_bad_top_k(trained: tuple[Path, Path], tiny_spec: dogclf.BackboneSpec, top_k: Any) -> None:
    classifier = dogclf.load_model(trained[1])

    with pytest.raises(ValueError, match=r"top_k must be an int >= 1"):
        classifier.predict(Image.new("RGB", (40, 40)), top_k=top_k)


def test_evaluate_report_is_consistent_with_its_confusion_matrix(
    trained: tuple[Path, Path], tmp_path: Path, tiny_spec: dogclf.BackboneSpec
) -> None:
    data, model_dir = trained
    classifier = dogclf.load_model(model_dir)
    samples = load_splits(data).test

    report = dogclf.evaluate(classifier, samples, batch_size=4)
    png = dogclf.plot_confusion_matrix(report, tmp_path / "plots" / "confusion.png")

    confusion = report.confusion
    assert report.n == len(samples) == 9
    assert sum(map(sum, confusion)) == 9
    assert [sum(row) for row in confusion] == [3, 3, 3]
    assert report.top1 == pytest.approx(sum(confusion[i][i] for i in range(3)) / 9)
    assert report.top5 == 1.0  # 3 classes: the right one is always among the best five
    assert report.per_class() == {
        name: {"accuracy": confusion[i][i] / 3, "n": 3} for i, name in enumerate(report.class_names)
    }
    off_diagonal = sorted(
        (-confusion[t][p], report.class_names[t], report.class_names[p])
        for t in range(3)
        for p in range(3)
        if t != p and confusion[t][p]
    )
    assert [(-d["count"], d["true"], d["predicted"]) for d in report.most_confused()] == off_diagonal
    as_dict = report.to_dict()
    assert {"top1", "top5", "n", "per_class", "most_confused", "confusion"} <= set(as_dict)
    json.dumps(as_dict)  # JSON-ready
    # The test metrics recorded at training time came from the same model.
    recorded = json.loads((model_dir / "config.json").read_text())["metrics"]["test"]
    assert recorded["top1"] == pytest.approx(report.top1)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(png) as image:
        assert image.format == "PNG"
        image.verify()


def test_evaluate_needs_samples(trained: tuple[Path, Path], tiny_spec: dogclf.BackboneSpec) -> None:
    classifier = dogclf.load_model(trained[1])

    with pytest.raises(ValueError, match=r"needs at least one image"):
        dogclf.evaluate(classifier, [])
