"""``--tensorboard DIR``: the scalars, read back with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_rules import clusters

from dogclf.diagnostics.rules import RuleSet, make_rules
from dogclf.diagnostics.tensorboard import TensorBoardLogger, job_tensorboard_dir
from dogclf.model import build_model
from dogclf.training.config import TrainConfig
from dogclf.training.head import fit_head

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is not installed"
)


def test_epoch_metrics_learning_rate_and_rule_findings_are_scalars(tiny_spec: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    rules = RuleSet(make_rules("WeightUpdateRatio,Overfit"))
    logger = TensorBoardLogger(tmp_path / "tb", rules=rules)
    rules.listeners.append(logger.add_finding)
    config = TrainConfig(epochs=3, batch_size=16, lr=10.0, device="cpu")
    noisy = clusters([40] * 3, noise=2.0)
    history = fit_head(model, noisy, clusters([10] * 3, noise=2.0, seed=1), config, callbacks=[rules, logger])

    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/train", "loss/valid", "top1/train", "top1/valid", "time/epoch_seconds", "lr/head"):
        assert tag in scalars, tag
    train = events.Scalars("loss/train")
    assert [e.step for e in train] == [1, 2, 3]
    assert [e.value for e in train] == pytest.approx([h["train_loss"] for h in history])
    assert [e.value for e in events.Scalars("lr/head")] == pytest.approx([10.0] * 3)
    assert len(events.Scalars("loss/train_step")) == 3 * 8
    # Each rule's series is 1 in the epochs it found its issue in (WeightUpdateRatio at least in the first).
    for rule in ("WeightUpdateRatio", "Overfit"):
        series = [e.value for e in events.Scalars(f"rules/{rule}")]
        assert series == [1.0 if rules.fired_in(rule, epoch) else 0.0 for epoch in (1, 2, 3)]
    assert events.Scalars("rules/WeightUpdateRatio")[0].value == 1.0
    assert "rules/text_summary" in events.Tags()["tensors"]  # the finding lines, as text


def test_a_sagemaker_job_names_its_tensorboard_folder(tmp_path: Path) -> None:
    config = tmp_path / "opt/ml/input/config/tensorboardoutputconfig.json"
    assert job_tensorboard_dir({"SAGEMAKER_BASE_DIR": str(tmp_path / "opt/ml")}) is None
    config.parent.mkdir(parents=True)
    config.write_text('{"LocalPath": "/opt/ml/output/tensorboard", "S3OutputPath": "s3://bucket/tb"}')
    assert job_tensorboard_dir({"SAGEMAKER_BASE_DIR": str(tmp_path / "opt/ml")}) == Path("/opt/ml/output/tensorboard")
