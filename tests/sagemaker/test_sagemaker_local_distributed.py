"""``--local`` runs the job as the AWS PyTorch container does: its training toolkit on top of SageMaker's, so a
distributed job (``--instance-count 2``) runs under torchrun, emulated as two processes on this machine."""

from __future__ import annotations

import importlib.util
import os
import re
import tarfile
from pathlib import Path

import pytest
from conftest import run_cli

import dogclf
from dogclf.errors import MissingExtraError
from dogclf.sagemaker.local import emulated_hyperparameters

DISTRIBUTED = {"lr": "0.001", "sagemaker_torch_distributed_enabled": "true"}


def test_instances_become_processes_of_the_pytorch_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert emulated_hyperparameters(DISTRIBUTED, 1) == DISTRIBUTED
    assert emulated_hyperparameters({"lr": "0.001"}, 3) == {"lr": "0.001"}
    if importlib.util.find_spec("sagemaker_pytorch_container") is not None:
        wanted = DISTRIBUTED | {"sagemaker_mpi_num_of_processes_per_host": "3"}
        assert emulated_hyperparameters(DISTRIBUTED, 3) == wanted
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *_: None)
    with pytest.raises(
        MissingExtraError, match=r"pip install 'dogclf\[sagemaker-local\]' \(sagemaker-pytorch-training"
    ):
        emulated_hyperparameters(DISTRIBUTED, 2)


@pytest.mark.slow
def test_instance_count_2_runs_two_processes_under_torchrun(
    tiny_plugin: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = pytest.importorskip("sagemaker_pytorch_container", reason="dogclf[sagemaker-local] is not installed")
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOGCLF_FEATURE_CACHE")}
    # the job sees no checkout; only the toolkits, wherever they are installed
    environ |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(container.__file__).parents[1])}
    out = tmp_path / "job"
    args = ["sagemaker", "train", "--local", "--out", str(out), "--data", str(tiny_tree), "--backbone", "tinynet"]
    args += ["--weights", "none", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--instance-count", "2"]

    code, printed, err = run_cli(args, capsys, environ)

    assert code == 0, err + printed[-3000:]
    assert "Emulating 2 instances as 2 processes on this machine (torchrun, gloo)" in printed
    assert "Imported framework sagemaker_pytorch_container.training" in printed
    assert re.search(r"torchrun --nnodes 1 --nproc_per_node 2 train\.py ", printed)
    assert len(re.findall(r"^dogclf train --data ", printed, re.M)) == 1  # rank 0 logs, rank 1 is quiet
    assert len(re.findall(r"^epoch=\d+ ", printed, re.M)) == 2
    with tarfile.open(out / "model.tar.gz") as tar:
        assert {"config.json", "model.safetensors", "code/inference.py"} <= set(tar.getnames())
