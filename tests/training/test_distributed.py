"""Training in two processes with torchrun (gloo on CPU) against the same training in one process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dogclf
from dogclf.data.folder import load_splits
from dogclf.features.extract import ExtractOptions
from dogclf.features.pipeline import prepare_features

TRAIN = ["--backbone", "tinynet", "--weights", "none", "--precision", "fp32", "--workers", "0"]
TRAIN += ["--epochs", "2", "--batch-size", "8", "--valid-fraction", "0.25"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train(args: list[str], env: dict[str, str], *, processes: int) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "dogclf"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes)]
        launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "dogclf"]
    done = subprocess.run(
        [*launcher, "train", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def flat_tree(tmp_path: Path) -> Path:
    """A class-per-folder tree (no valid/): 3 classes of 12 images, 9 train and 3 valid each with --valid-fraction."""
    data = dogclf.make_synthetic_dataset(tmp_path / "synthetic", num_classes=3, per_split=(12, 0, 0), size=40, seed=5)
    return data / "train"


def _epochs(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("epoch=")]


@pytest.mark.slow
def test_two_processes_share_the_extraction_and_train_the_same_head(
    flat_tree: Path, tmp_path: Path, plugin_env: dict[str, str], tiny_plugin: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    one = _train(
        [*TRAIN, "--data", str(flat_tree), "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")],
        plugin_env,
        processes=1,
    )
    two = _train(
        [*TRAIN, "--data", str(flat_tree), "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2")],
        plugin_env,
        processes=2,
    )

    assert len(_epochs(two.stdout)) == 2  # rank 0 alone prints
    # Rank 0 extracted every other photo of each split (14 of 27 train, 5 of 9 valid); rank 1 the rest, silently.
    [share] = [line for line in two.stdout.splitlines() if line.startswith("features: ")]
    assert share.startswith("features: 0 cached, 19 extracted")
    # The two-process cache holds every photo's features, equal to the one-process run's.
    splits = load_splits(flat_tree, valid_fraction=0.25, seed=0)
    model = dogclf.build_model("tinynet", 3, weights=None)
    model.load_state_dict(load_file(str(tmp_path / "one" / "model.safetensors")))
    dogclf_log.clear()  # from here on
    found = dogclf_log
    options = ExtractOptions(precision="fp32", num_workers=0, device="cpu")
    common = {"weights_label": "none", "options": options, "progress": False}
    reference = prepare_features(splits, tiny_plugin, model.backbone, cache_dir=tmp_path / "c1", **common)
    shared = prepare_features(splits, tiny_plugin, model.backbone, cache_dir=tmp_path / "c2", **common)
    assert all(line.startswith("features: 36 cached, 0 extracted") for line in found), found
    for name in ("train", "valid"):
        torch.testing.assert_close(shared[name].features, reference[name].features, rtol=0, atol=1e-6)
    # The head trained on the gathered features equals the one-process head.
    first, second = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6)
    strip = lambda lines: [line.rsplit(" seconds=", 1)[0] for line in lines]  # noqa: E731
    assert strip(_epochs(two.stdout)) == strip(_epochs(one.stdout))


@pytest.mark.slow
def test_two_processes_train_through_the_backbone_under_ddp_like_one(
    flat_tree: Path, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    args = [*TRAIN, "--data", str(flat_tree), "--augment"]
    one = _train([*args, "--out", str(tmp_path / "one")], plugin_env, processes=1)
    two = _train([*args, "--out", str(tmp_path / "two")], plugin_env, processes=2)

    first, second = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(_epochs(one.stdout), _epochs(two.stdout), strict=True):
        left, right = dict(i.split("=") for i in a.split()), dict(i.split("=") for i in b.split())
        for key in ("train_loss", "valid_loss", "valid_top1", "train_top1"):
            assert float(right[key]) == pytest.approx(float(left[key]), abs=2e-4)
