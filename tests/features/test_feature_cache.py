"""The feature cache, and training the head on cached features: hits, invalidation, faults, equality with images."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import captured_log
from PIL import Image

import dogclf
from dogclf.backbones.weights import backbone_digest
from dogclf.cli import main
from dogclf.data.folder import load_splits
from dogclf.errors import UnreadableImageError
from dogclf.features import cache as cache_module
from dogclf.features.cache import (
    FeatureCache,
    default_cache_dir,
    image_key,
    make_backbone_key,
)
from dogclf.features.extract import ExtractOptions
from dogclf.features.pipeline import FeatureSet, prepare_features
from dogclf.model import build_model
from dogclf.training.head import fit_head, head_logits
from dogclf.training.loop import Trainer

SUMMARY = re.compile(r"features: (\d+) cached, (\d+) extracted")
FP32 = ExtractOptions(batch_size=8, num_workers=0, precision="fp32", device="cpu")


class Counted:
    """Counts the images that go through a backbone (a forward hook: the real backbone still runs)."""

    def __init__(self, module: torch.nn.Module, *, stop_after_batches: int | None = None) -> None:
        self.images = 0
        self.batches = 0
        self.stop_after_batches = stop_after_batches
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.batches += 1
        self.images += len(inputs[0])
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            raise KeyboardInterrupt

    def close(self) -> None:
        self.handle.remove()


def _backbone(spec: dogclf.BackboneSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, 3, weights=None).backbone


def _prepare(
    data: Path,
    spec: dogclf.BackboneSpec,
    backbone: torch.nn.Module,
    cache_dir: Path | None,
    *,
    options: ExtractOptions = FP32,
) -> tuple[dict[str, FeatureSet], list[str]]:
    splits = load_splits(data)
    with captured_log() as messages:
        sets = prepare_features(
            splits,
            spec,
            backbone,
            weights_label="none",
            cache_dir=cache_dir,
            options=options,
            progress=False,
        )
    return sets, messages


def _counts(messages: list[str]) -> tuple[int, int]:
    found = [SUMMARY.search(m) for m in messages]
    hits = [m for m in found if m]
    assert len(hits) == 1, messages
    return int(hits[0].group(1)), int(hits[0].group(2))


def _shards(root: Path) -> list[Path]:
    return sorted(root.glob("*/shard-*.safetensors"))


def _all_features(sets: dict[str, FeatureSet]) -> torch.Tensor:
    return torch.cat([sets[name].features for name in ("train", "valid", "test")])


@pytest.fixture
def counted_backbone(tiny_spec: dogclf.BackboneSpec) -> Iterator[tuple[torch.nn.Module, Counted]]:
    backbone = _backbone(tiny_spec)
    counter = Counted(backbone)
    yield backbone, counter
    counter.close()


# --- hits and invalidation -------------------------------------------------------------------------------------------


def test_second_run_reads_every_feature_from_the_cache(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, counted_backbone: tuple[torch.nn.Module, Counted]
) -> None:
    backbone, counter = counted_backbone
    first, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (0, 42)
    assert counter.images == 42
    assert [len(first[s]) for s in ("train", "valid", "test")] == [24, 9, 9]
    assert first["train"].features.shape == (24, 16)
    assert first["train"].features.dtype == torch.float32
    assert first["train"].labels.dtype == torch.int64

    second, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 0)
    assert counter.images == 42, "nothing may go through the backbone on a full cache hit"
    torch.testing.assert_close(_all_features(second), _all_features(first), rtol=0, atol=0)
    for name in ("train", "valid", "test"):
        assert torch.equal(second[name].labels, first[name].labels)
    namespace = json.loads(next((tmp_path / "cache").glob("*/namespace.json")).read_text())
    assert namespace["key"]["backbone"] == "tinynet"
    assert namespace["key"]["precision"] == "fp32"


def test_cached_features_equal_a_fresh_extraction_without_cache(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, counted_backbone: tuple[torch.nn.Module, Counted]
) -> None:
    backbone, _ = counted_backbone
    _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    cached, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    fresh, messages = _prepare(tiny_tree, tiny_spec, backbone, None)
    assert _counts(messages) == (0, 42)
    torch.testing.assert_close(_all_features(cached), _all_features(fresh))
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_a_changed_or_added_image_is_extracted_again_and_nothing_else(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, counted_backbone: tuple[torch.nn.Module, Counted]
) -> None:
    backbone, counter = counted_backbone
    before, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    changed = sorted((tiny_tree / "train").rglob("*.jpg"))[0]
    Image.new("RGB", (40, 40), (250, 10, 10)).save(changed, quality=95)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    counter.images = 0

    after, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (41, 1)
    assert counter.images == 1
    index = [s.path for s in load_splits(tiny_tree).train].index(changed)
    assert not torch.allclose(after["train"].features[index], before["train"].features[index])

    added = changed.with_name("added_00001.jpg")
    Image.new("RGB", (40, 40), (10, 250, 10)).save(added)
    counter.images = 0
    grown, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 1)
    assert counter.images == 1
    assert len(grown["train"]) == 25


# --- namespaces ------------------------------------------------------------------------------------------------------


def test_namespace_changes_with_weights_precision_and_preprocessing(tiny_spec: dogclf.BackboneSpec) -> None:
    pre = tiny_spec.preprocessing
    digest = backbone_digest(_backbone(tiny_spec, seed=0))
    assert backbone_digest(_backbone(tiny_spec, seed=0)) == digest, "the digest must be deterministic"
    other_weights = backbone_digest(_backbone(tiny_spec, seed=1))
    assert other_weights != digest
    base = make_backbone_key(backbone="tinynet", digest=digest, preprocessing=pre, precision="fp32")
    variants = [
        make_backbone_key(backbone="tinynet", digest=other_weights, preprocessing=pre, precision="fp32"),
        make_backbone_key(backbone="tinynet", digest=digest, preprocessing=pre, precision="bf16"),
        make_backbone_key(
            backbone="tinynet",
            digest=digest,
            preprocessing=dogclf.Preprocessing(input_size=32, resize_size=40, mean=pre.mean, std=pre.std),
            precision="fp32",
        ),
        make_backbone_key(backbone="tinynet2", digest=digest, preprocessing=pre, precision="fp32"),
        # bf16 features differ between engines; fp32 ones agree and share the namespace (inference/test_openvino.py).
        make_backbone_key(backbone="tinynet", digest=digest, preprocessing=pre, precision="bf16", engine="openvino"),
    ]
    assert len({base, *variants}) == 6
    assert make_backbone_key(
        backbone="tinynet", digest=digest, preprocessing=pre, precision="fp32", engine="openvino"
    ) == (base)
    with pytest.raises(ValueError, match="not 'auto'"):
        make_backbone_key(backbone="tinynet", digest=digest, preprocessing=pre, precision="auto")


def test_other_weights_or_precision_do_not_reuse_features(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    cache = tmp_path / "cache"
    _, messages = _prepare(tiny_tree, tiny_spec, _backbone(tiny_spec, seed=0), cache)
    assert _counts(messages) == (0, 42)
    _, messages = _prepare(tiny_tree, tiny_spec, _backbone(tiny_spec, seed=1), cache)
    assert _counts(messages) == (0, 42)
    bf16 = ExtractOptions(batch_size=8, num_workers=0, precision="bf16", device="cpu")
    _, messages = _prepare(tiny_tree, tiny_spec, _backbone(tiny_spec, seed=0), cache, options=bf16)
    assert _counts(messages) == (0, 42)
    assert len(list(cache.glob("*/namespace.json"))) == 3


def test_default_cache_dir_reads_the_given_environment() -> None:
    assert default_cache_dir({"DOGCLF_FEATURE_CACHE": "/x/feats", "XDG_CACHE_HOME": "/y"}) == Path("/x/feats")
    assert default_cache_dir({"XDG_CACHE_HOME": "/y", "HOME": "/h"}) == Path("/y/dogclf/features")
    assert default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/dogclf/features")


# --- interruptions and faults ----------------------------------------------------------------------------------------


def test_ctrl_c_during_extraction_keeps_finished_batches(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    backbone = _backbone(tiny_spec)
    counter = Counted(backbone, stop_after_batches=3)  # the 3rd batch of 8 is interrupted
    with pytest.raises(KeyboardInterrupt):
        _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    counter.close()
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))
    _, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (16, 26)


def test_a_half_written_temporary_shard_is_never_read(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, counted_backbone: tuple[torch.nn.Module, Counted]
) -> None:
    backbone, _ = counted_backbone
    first, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    shard = _shards(tmp_path / "cache")[0]
    # What a run killed in the middle of writing leaves: the start of a shard under a temporary name.
    (shard.parent / f".tmp-{shard.name}").write_bytes(shard.read_bytes()[:100])
    second, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 0)
    assert not any("warning" in m for m in messages), messages
    torch.testing.assert_close(_all_features(second), _all_features(first), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_shard_is_reported_removed_and_recomputed(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    counted_backbone: tuple[torch.nn.Module, Counted],
    damage: str,
) -> None:
    backbone, counter = counted_backbone
    first, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    shards = _shards(tmp_path / "cache")
    assert len(shards) == 1
    data = bytearray(shards[0].read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # a bit flip inside the feature matrix: only the checksum can tell
    shards[0].write_bytes(bytes(data))
    counter.images = 0

    second, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    warnings = [m for m in messages if "warning" in m]
    assert len(warnings) == 1
    assert str(shards[0]) in warnings[0]
    assert "extracting its images again" in warnings[0]
    assert _counts(messages) == (0, 42)
    assert counter.images == 42
    torch.testing.assert_close(_all_features(second), _all_features(first))
    _, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 0), "the recomputed features are stored again"


def test_an_unwritable_cache_folder_warns_once_and_training_goes_on(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, dogclf_log: list[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    dogclf_log.clear()  # from here on
    messages = dogclf_log
    result = dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "model",
        config=dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu"),
        weights=None,
        progress=False,
        cache_dir=blocker / "cache",
        precision="fp32",
    )
    warnings = [m for m in messages if "cannot be written" in m]
    assert len(warnings) == 1, messages
    assert str(blocker / "cache") in warnings[0]
    assert "--cache-dir" in warnings[0]
    assert _counts(messages) == (0, 42)
    assert len(result.history) == 1
    assert (result.model_dir / "model.safetensors").is_file()


def test_a_full_disk_stops_caching_with_one_clear_message(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fault injection: where a full disk shows (delayed allocation)
    backbone = _backbone(tiny_spec)
    sets, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    warnings = [m for m in messages if "cannot be written" in m]
    assert len(warnings) == 1
    assert "disk is full" in warnings[0]
    assert len(sets["train"]) == 24
    assert not _shards(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_cache_writes_a_shard_per_chunk_and_unique_names(tmp_path: Path) -> None:
    images = []
    for i in range(5):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(bytes([i]) * (i + 1))
        images.append(path)
    keys = [image_key(p) for p in images]
    writer = FeatureCache(tmp_path / "cache", backbone_key="k", label="tiny", chunk_size=2)
    writer.add(keys[:1], torch.zeros(1, 4))
    assert not _shards(tmp_path / "cache"), "below a chunk nothing is written yet"
    writer.add(keys[1:3], torch.ones(2, 4))
    assert len(_shards(tmp_path / "cache")) == 2  # 3 rows in chunks of 2
    other = FeatureCache(tmp_path / "cache", backbone_key="k", label="tiny", chunk_size=2)
    other.add(keys[3:], torch.full((2, 4), 2.0))  # a second writer on the same folder: new names, no clash
    positions, features = FeatureCache(tmp_path / "cache", backbone_key="k", label="tiny").get_many(
        [*keys, image_key(images[0])]
    )
    assert positions == [0, 1, 2, 3, 4, 5]
    assert features is not None
    assert features[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 0.0]
    assert len(cache_module.FeatureCache(tmp_path / "cache", backbone_key="other")) == 0


class _Clock:
    """The ``time`` module with a monotonic clock the test moves (wall-clock functions stay real)."""

    def __init__(self) -> None:
        import time

        self.now = 1000.0
        self.time, self.time_ns = time.time, time.time_ns

    def monotonic(self) -> float:
        return self.now


def _rows_on_disk(folder: Path) -> int:
    cache = FeatureCache(folder, backbone_key="k", label="tiny")
    return len(cache)


def _slow_run(tmp_path: Path, cache: FeatureCache, clock: _Clock, seconds: int) -> list[tuple[float, int]]:
    """One image a second for ``seconds`` seconds; ``(seconds since start, rows queued and unwritten)`` after each."""
    started, unwritten = clock.now, []
    for i in range(seconds):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(i.to_bytes(4, "big"))
        clock.now += 1.0
        cache.add([image_key(path)], torch.full((1, 4), float(i)))
        unwritten.append((clock.now - started, i + 1 - cache.writes))
    return unwritten


def test_a_slow_extraction_is_written_every_few_seconds_so_a_kill_loses_little(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(cache_module, "time", clock)
    cache = FeatureCache(tmp_path / "cache", backbone_key="k", label="tiny")  # the defaults

    unwritten = _slow_run(tmp_path, cache, clock, 40)

    assert max(rows for _, rows in unwritten) <= 5  # never more than 5 s of work at risk (was 60 s, or 512 images)
    assert _rows_on_disk(tmp_path / "cache") >= 36  # what a SIGKILL at 40 s finds on disk


def test_slow_shard_writes_stretch_the_wait_so_writing_takes_at_most_two_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(cache_module, "time", clock)
    cache = FeatureCache(tmp_path / "cache", backbone_key="k", label="tiny")
    real_write = cache._atomic_write_bytes
    writes: list[float] = []

    def slow_disk(target: Path, data: bytes) -> None:
        real_write(target, data)
        clock.now += 1.0  # a network disk: a second per shard
        writes.append(1.0)

    monkeypatch.setattr(cache, "_atomic_write_bytes", slow_disk)

    unwritten = _slow_run(tmp_path, cache, clock, 300)

    assert cache.flush_seconds_now == pytest.approx(50.0)  # 1 s per write at most 2 % of the time
    elapsed = unwritten[-1][0]
    assert len(writes) >= 3
    assert sum(writes) / elapsed <= 0.02
    assert max(rows for _, rows in unwritten) <= 51


# --- training on features --------------------------------------------------------------------------------------------


def _config(epochs: int = 2, **changes: Any) -> dogclf.TrainConfig:
    # The epoch loop, which both paths share (the L-BFGS head trains on features only).
    settings: dict[str, Any] = {"head_solver": "loop", **changes}
    return dogclf.TrainConfig(epochs=epochs, batch_size=8, num_workers=0, device="cpu", **settings)


def _without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


def _image_path_history(data: Path, spec: dogclf.BackboneSpec, config: dogclf.TrainConfig) -> list[dict[str, float]]:
    """The frozen-backbone image path (every epoch through the backbone), seeded as train() seeds it."""
    splits = load_splits(data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(spec, len(splits.classes), weights=None)
    trainer = Trainer(
        model,
        train_samples=splits.train,
        valid_samples=splits.valid,
        preprocessing=spec.preprocessing,
        config=config,
    )
    return trainer.fit()


def _assert_same_history(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(_without_seconds(a), _without_seconds(b), strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), (key, x, y)


def test_cached_training_matches_the_image_path_and_saves_a_loadable_model(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    config = _config(epochs=3, seed=3)
    result = dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "cached",
        config=config,
        weights=None,
        progress=False,
        cache_dir=tmp_path / "cache",
        precision="fp32",
    )
    _assert_same_history(result.history, _image_path_history(tiny_tree, tiny_spec, config))

    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["training"]["features"] == "cached"
    assert saved["training"]["precision"] == "fp32"
    # The model directory is the usual one: the loaded classifier runs images through backbone and head and
    # reproduces the test metrics computed from cached features.
    classifier = dogclf.load_model(result.model_dir)
    report = dogclf.evaluate(classifier, result.splits.test)
    assert result.test is not None
    assert report.top1 == pytest.approx(result.test["top1"])
    assert report.loss == pytest.approx(result.test["loss"], rel=1e-4)

    # Again, from the cache: the same history, and no extraction.
    with captured_log() as again:
        rerun = dogclf.train(
            tiny_tree,
            "tinynet",
            tmp_path / "cached",
            config=config,
            weights=None,
            progress=False,
            cache_dir=tmp_path / "cache",
            precision="fp32",
            overwrite=True,
        )
    assert _counts(again) == (42, 0)
    _assert_same_history(rerun.history, result.history)


def test_no_cache_and_augment_choose_their_paths(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, dogclf_log: list[str]
) -> None:
    cache = tmp_path / "cache"
    common: dict[str, Any] = {"weights": None, "progress": False, "cache_dir": cache, "precision": "fp32"}
    dogclf_log.clear()  # from here on
    messages = dogclf_log
    in_memory = dogclf.train(tiny_tree, "tinynet", tmp_path / "m1", config=_config(1), cache=False, **common)
    assert _counts(messages) == (0, 42)
    assert not cache.exists(), "--no-cache writes nothing to the cache folder"
    assert json.loads((in_memory.model_dir / "config.json").read_text())["training"]["features"] == "in-memory"

    messages.clear()
    augmented = dogclf.train(tiny_tree, "tinynet", tmp_path / "m2", config=_config(1, augment=True), **common)
    assert not [m for m in messages if SUMMARY.search(m)], "--augment trains through the backbone, no extraction"
    assert not cache.exists()
    assert json.loads((augmented.model_dir / "config.json").read_text())["training"]["features"] == "images"


def test_fit_head_reports_each_epoch_and_can_be_stopped(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    sets, _ = _prepare(tiny_tree, tiny_spec, _backbone(tiny_spec), None)
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    seen: list[dict[str, float]] = []

    def report(metrics: dict[str, float]) -> None:
        seen.append(metrics)
        if metrics["epoch"] == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        fit_head(model, sets["train"], sets["valid"], _config(5), on_epoch=report)
    assert [m["epoch"] for m in seen] == [1.0, 2.0]
    assert set(seen[0]) == {"epoch", "train_loss", "train_top1", "valid_loss", "valid_top1", "seconds"}

    history = fit_head(model, sets["train"], None, _config(1))
    assert history[0]["valid_top1"] != history[0]["valid_top1"]  # NaN without validation
    assert head_logits(model.head, sets["test"].features).shape == (9, 3)


def test_resume_after_ctrl_c_continues_from_checkpoint_and_cache(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, dogclf_log: list[str]
) -> None:
    class StopAfterFirstEpoch(dogclf.Callback):
        def on_epoch_end(self, state: Any, metrics: Any) -> None:
            if state.epoch == 1:
                raise KeyboardInterrupt

    common: dict[str, Any] = {
        "weights": None,
        "progress": False,
        "cache_dir": tmp_path / "cache",
        "precision": "fp32",
        "config": _config(3),
    }
    full = dogclf.train(tiny_tree, "tinynet", tmp_path / "full", **common)
    with pytest.raises(KeyboardInterrupt):
        dogclf.train(tiny_tree, "tinynet", tmp_path / "cut", callbacks=[StopAfterFirstEpoch()], **common)
    dogclf_log.clear()  # from here on
    messages = dogclf_log
    resumed = dogclf.train(tiny_tree, "tinynet", tmp_path / "cut", resume=True, **common)
    assert _counts(messages) == (42, 0)
    _assert_same_history(resumed.history, full.history)


def test_cli_flags_reach_training(tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path) -> None:
    out = tmp_path / "model"
    argv = ["train", "--data", str(tiny_tree), "--backbone", "tinynet", "--out", str(out), "--weights", "none"]
    argv += ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--precision", "fp32", "--extract-batch-size", "16"]
    assert main(argv) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["features"] == "cached"
    assert training["precision"] == "fp32"
    assert _shards(tmp_path / "cache")
    assert main([*argv, "--overwrite", "--no-cache"]) == 0
    assert json.loads((out / "config.json").read_text())["training"]["features"] == "in-memory"


# --- permissions, umask, content keys -------------------------------------------------------------------------------


def _refuse_unreadable_files_as_an_ordinary_user_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads a mode-000 file anyway; for root, emulate the kernel's refusal an ordinary user gets."""
    if os.geteuid() != 0:
        return
    import builtins

    real_open = builtins.open

    def checked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        readable = not isinstance(file, (str, os.PathLike)) or not os.path.isfile(file) or os.stat(file).st_mode & 0o444
        if "r" in mode and not readable:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", checked_open)


def test_a_shard_it_cannot_read_for_lack_of_permission_is_skipped_never_deleted(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    counted_backbone: tuple[torch.nn.Module, Counted],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backbone, counter = counted_backbone
    first, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    [shard] = _shards(tmp_path / "cache")
    content = shard.read_bytes()
    shard.chmod(0o000)  # e.g. written by a colleague into a shared cache folder
    _refuse_unreadable_files_as_an_ordinary_user_would(monkeypatch)
    counter.images = 0

    second, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    warnings = [m for m in messages if "warning" in m]
    assert len(warnings) == 1, messages
    assert str(shard) in warnings[0]
    assert "permission denied" in warnings[0].lower()
    assert "not removed" in warnings[0]
    assert _counts(messages) == (0, 42)
    assert counter.images == 42
    torch.testing.assert_close(_all_features(second), _all_features(first))
    assert shard.exists(), "a shard we cannot read is not ours to delete"
    shard.chmod(0o644)
    assert shard.read_bytes() == content

    _, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 0)


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_cache_files_honour_the_umask(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        _prepare(tiny_tree, tiny_spec, _backbone(tiny_spec), tmp_path / "cache")
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert _shards(tmp_path / "cache")
    assert {p.name for p in written} >= {"namespace.json", _shards(tmp_path / "cache")[0].name}
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    for folder in [p for p in (tmp_path / "cache").rglob("*") if p.is_dir()]:
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder


def _same_size_replacement(path: Path, colour: tuple[int, int, int], *, how: str) -> None:
    """Replaces ``path`` with other pixels of exactly the same byte size, and puts its old mtime back."""
    before = path.stat()
    replacement = path.with_name(f".incoming-{path.name}")
    Image.new("RGB", (40, 40), colour).save(replacement, format="BMP")
    assert replacement.stat().st_size == before.st_size
    if how == "rename":  # what rsync -a does: a temporary file renamed over the old one, then its mtime set
        os.replace(replacement, path)
    else:  # what an in-place copy or untar over the tree does: the same file rewritten
        path.write_bytes(replacement.read_bytes())
        replacement.unlink()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_a_same_size_file_replaced_with_its_old_mtime_is_extracted_again(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    counted_backbone: tuple[torch.nn.Module, Counted],
    how: str,
) -> None:
    backbone, counter = counted_backbone
    photo = tiny_tree / "train" / "001.Synthetic_red_discs" / "scan.bmp"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    before, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (0, 43)
    _same_size_replacement(photo, (30, 30, 200), how=how)
    counter.images = 0

    after, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert _counts(messages) == (42, 1)
    assert counter.images == 1
    index = [s.path for s in load_splits(tiny_tree).train].index(photo)
    assert not torch.allclose(after["train"].features[index], before["train"].features[index])
    fresh, _ = _prepare(tiny_tree, tiny_spec, backbone, None)
    torch.testing.assert_close(_all_features(after), _all_features(fresh))


def test_a_cache_copied_to_another_machine_hits_for_the_same_photos_in_another_folder(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, counted_backbone: tuple[torch.nn.Module, Counted]
) -> None:
    import shutil

    backbone, counter = counted_backbone
    local, _ = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    # The SageMaker case: the cache folder goes through S3 into a "features" channel, and the photos arrive under
    # another root with new modification times (and new inodes).
    channel = tmp_path / "opt" / "ml" / "input" / "data"
    shutil.copytree(tmp_path / "cache", channel / "features", copy_function=shutil.copy)
    shutil.copytree(tiny_tree, channel / "training", copy_function=shutil.copy)
    counter.images = 0

    remote, messages = _prepare(channel / "training", tiny_spec, backbone, channel / "features")
    assert _counts(messages) == (42, 0)
    assert counter.images == 0
    torch.testing.assert_close(_all_features(remote), _all_features(local), rtol=0, atol=0)


def test_an_older_cache_format_is_left_alone_and_named_once(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    old = tmp_path / "cache" / "tinynet-0123456789abcdef0123"
    old.mkdir(parents=True)
    (old / "namespace.json").write_text(json.dumps({"key": {"format": 1, "backbone": "tinynet"}}))
    (old / "shard-18ed5b3fd20e1dd5-9210-229167c8.safetensors").write_bytes(b"\0" * 5000)
    backbone = _backbone(tiny_spec)

    _, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    notes = [m for m in messages if "older cache format" in m]
    assert len(notes) == 1, messages
    assert str(tmp_path / "cache") in notes[0]
    assert old.name in notes[0]
    assert _counts(messages) == (0, 42)
    assert (old / "namespace.json").is_file(), "an older dogclf may still use it: never removed"
    _, messages = _prepare(tiny_tree, tiny_spec, backbone, tmp_path / "cache")
    assert not [m for m in messages if "older cache format" in m]
    assert _counts(messages) == (42, 0)


# --- decoding once ----------------------------------------------------------------------------------------------------


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    from dogclf.data import images

    decoded: list[object] = []
    real = images.load_rgb

    def counting(source: Any, **kwargs: Any) -> Any:
        decoded.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(images, "load_rgb", counting)
    return decoded


def test_training_on_features_decodes_each_new_image_once_and_cached_ones_never(
    tmp_path: Path,
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    dogclf_log: list[str],
) -> None:
    broken = tiny_tree / "train" / "002.Synthetic_blue_stripes" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    decoded = _count_decodes(monkeypatch)
    common: dict[str, Any] = {"weights": None, "progress": False, "cache_dir": tmp_path / "cache", "precision": "fp32"}

    dogclf_log.clear()  # from here on

    messages = dogclf_log
    first = dogclf.train(tiny_tree, "tinynet", tmp_path / "m1", config=_config(1), **common)
    assert len(decoded) == 43, "one decode per image: extraction is the check"
    assert [p for p, _ in first.splits.skipped] == [broken]
    assert any(f"skipped {broken}: " in m for m in messages), messages
    assert len(first.splits.train) == 24
    assert _counts(messages) == (0, 43)

    decoded.clear()
    messages.clear()
    second = dogclf.train(tiny_tree, "tinynet", tmp_path / "m2", config=_config(1), **common)
    assert len(decoded) == 1, "only the unreadable file, which is never cached, is decoded again"
    assert _counts(messages) == (42, 1)
    assert [p for p, _ in second.splits.skipped] == [broken]
    _assert_same_history(second.history, first.history)

    decoded.clear()
    with pytest.raises(UnreadableImageError, match="strict mode"):
        dogclf.train(tiny_tree, "tinynet", tmp_path / "m3", config=_config(1), strict=True, **common)
    assert len(decoded) == 43, "--strict checks every image before anything else"
