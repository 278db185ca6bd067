"""The training rules: each fires in the situation it is for, none fires on healthy runs, on the feature path (the
head trains on backbone features) and through the backbone (images, unfrozen).

Feature-path situations train the tiny backbone's head on in-memory Gaussian clusters (16 features per point), so a
run takes a fraction of a second; image-path ones use synthetic JPEGs through the tiny backbone.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import captured_log

import dogclf
from dogclf.data.folder import load_splits
from dogclf.diagnostics.rules import (
    BUILTIN_RULES,
    RULES_FILE,
    Finding,
    RuleSet,
    StalledTrainingRule,
    make_rules,
    parse_rule_param,
    select_rules,
)
from dogclf.features.pipeline import FeatureSet
from dogclf.model import HeadConfig, build_model
from dogclf.training.callbacks import Callback, TrainState
from dogclf.training.config import TrainConfig
from dogclf.training.head import fit_head
from dogclf.training.loop import Trainer

# The defaults of SageMaker Debugger's built-in rules, from the AWS documentation
# (https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html).
AWS_DEFAULTS = {
    "LossNotDecreasing": {"num_steps": 10, "diff_percent": 0.1, "increase_threshold_percent": 5.0, "mode": None},
    "Overfit": {"start_step": 0, "patience": 1, "ratio_threshold": 0.1},
    "Overtraining": {"patience_train": 5, "patience_validation": 10, "delta": 0.01},
    "VanishingGradient": {"threshold": 0.0000001},
    "ExplodingTensor": {"collection_names": None, "tensor_regex": None, "only_nan": False},
    "WeightUpdateRatio": {"num_steps": None, "large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9},
    "PoorWeightInitialization": {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10},
    "ClassImbalance": {"threshold_imbalance": 10, "threshold_misprediction": 0.7, "samples": 500},
    "StalledTrainingRule": {"threshold": 1800, "stop_training_on_fire": False},
}


def clusters(counts: list[int], *, noise: float = 0.5, seed: int = 0) -> FeatureSet:
    """Points around one fixed random centre per class (the same centres for every call)."""
    centres = torch.randn(len(counts), 16, generator=torch.Generator().manual_seed(99))
    generator = torch.Generator().manual_seed(seed)
    features = [centres[c] + noise * torch.randn(n, 16, generator=generator) for c, n in enumerate(counts)]
    labels = [torch.full((n,), c) for c, n in enumerate(counts)]
    return FeatureSet(torch.cat(features), torch.cat(labels))


def run_head(
    spec: Any,
    train: FeatureSet,
    valid: FeatureSet | None,
    *,
    rules: str = "all",
    params: dict[str, dict[str, Any]] | None = None,
    lr: float = 1e-2,
    epochs: int = 5,
    batch_size: int = 16,
    head: HeadConfig | None = None,
    scale: float | None = None,
    action: str = "warn",
    out_dirs: tuple[Path, ...] = (),
    callbacks: tuple[Callback, ...] = (),
) -> tuple[list[Finding], list[str], list[dict[str, float]], RuleSet]:
    """Trains the head on features under a rule set; returns its findings, the log lines and the history."""
    torch.manual_seed(0)
    model = build_model(spec, int(train.labels.max()) + 1, weights=None, head=head or HeadConfig())
    if scale is not None:
        with torch.no_grad():
            for parameter in model.head.parameters():
                parameter.mul_(scale)
    rule_set = RuleSet(make_rules(rules, params), action=action, out_dirs=out_dirs)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device="cpu")
    with captured_log() as lines:
        history = fit_head(model, train, valid, config, callbacks=[rule_set, *callbacks])
    return rule_set.findings, lines, history, rule_set


def fired(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_rules_carry_sagemaker_names_and_default_parameters() -> None:
    assert set(BUILTIN_RULES) == set(AWS_DEFAULTS)
    for name, defaults in AWS_DEFAULTS.items():
        rule = BUILTIN_RULES[name]()
        assert rule.name == name
        parameters = rule.parameters()
        for key, value in defaults.items():
            assert parameters[key] == value, (name, key)
        assert rule.documentation().startswith(
            "https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules"
        )


def test_healthy_feature_run_fires_no_rule(tiny_spec: Any, tmp_path: Path) -> None:
    findings, lines, history, _ = run_head(
        tiny_spec, clusters([40] * 3), clusters([10] * 3, seed=1), out_dirs=(tmp_path,)
    )
    assert history[-1]["valid_top1"] == 1.0
    assert findings == []
    assert lines == []
    record = json.loads((tmp_path / RULES_FILE).read_text())
    assert record["status"] == "Completed"
    assert {r["name"]: r["status"] for r in record["rules"]} == dict.fromkeys(BUILTIN_RULES, "NoIssuesFound")


def test_an_lbfgs_head_is_not_judged_overfit_for_its_converged_training_loss(
    tiny_spec: Any, dogclf_log: list[str]
) -> None:
    from dogclf.training.lbfgs import fit_lbfgs_head

    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    rule_set = RuleSet(make_rules("all"))
    config = TrainConfig(device="cpu", head_solver="lbfgs")
    train, valid = clusters([40] * 3, noise=1.5), clusters([10] * 3, noise=1.5, seed=1)

    history, _ = fit_lbfgs_head(model, train, valid, config, callbacks=[rule_set])

    (entry,) = history
    assert entry["valid_loss"] > 1.1 * entry["train_loss"]  # what Overfit's default ratio_threshold would flag
    assert "Overfit" not in fired(rule_set.findings)
    assert not any(line.startswith("rule=Overfit") for line in lines)


def test_healthy_run_through_the_backbone_fires_no_rule(tiny_spec: Any, tmp_path: Path, dogclf_log: list[str]) -> None:
    root = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=3, per_split=(40, 12, 0), size=32, seed=1)
    splits = load_splits(root)
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None, freeze=False)
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    rule_set = RuleSet(make_rules("all"))
    config = TrainConfig(epochs=4, batch_size=8, lr=1e-2, num_workers=0, device="cpu")
    trainer = Trainer(
        model,
        train_samples=splits.train,
        valid_samples=splits.valid,
        preprocessing=tiny_spec.preprocessing,
        config=config,
        callbacks=[rule_set],
    )
    history = trainer.fit()
    assert history[-1]["valid_loss"] < history[0]["valid_loss"] / 2
    assert lines == []


def test_a_diverging_learning_rate_fires_loss_and_update_ratio_rules(tiny_spec: Any) -> None:
    noisy = clusters([40] * 3, noise=2.0)
    findings, lines, _, _ = run_head(tiny_spec, noisy, clusters([10] * 3, noise=2.0, seed=1), lr=10.0, epochs=8)
    assert {"LossNotDecreasing", "WeightUpdateRatio"} <= fired(findings)
    update = next(f for f in findings if f.rule == "WeightUpdateRatio")
    assert update.epoch == 1
    assert update.step == 1
    assert "above large_threshold 10 in head.0.weight" in update.detail
    loss = next(f for f in findings if f.rule == "LossNotDecreasing")
    assert "rose" in loss.detail
    assert "increase_threshold_percent 5" in loss.detail
    assert lines[0] == findings[0].line()


def test_a_head_initialised_far_too_large_fires_poor_weight_initialization(tiny_spec: Any) -> None:
    findings, _, _, _ = run_head(tiny_spec, clusters([40] * 3), clusters([10] * 3, seed=1), scale=50.0)
    poor = next(f for f in findings if f.rule == "PoorWeightInitialization")
    assert (poor.epoch, poor.step) == (1, 0)
    assert "softmax_input" in poor.detail
    assert "against unit variance (threshold 10)" in poor.detail
    assert "vs ln(3) = 1.1" in poor.detail
    # The same head at PyTorch's own initialisation is fine.
    findings, _, _, _ = run_head(tiny_spec, clusters([40] * 3), clusters([10] * 3, seed=1))
    assert "PoorWeightInitialization" not in fired(findings)


def test_a_tiny_training_set_trained_for_many_epochs_fires_overfit_and_overtraining(tiny_spec: Any) -> None:
    train, valid = clusters([3] * 3, noise=2.0), clusters([30] * 3, noise=2.0, seed=1)
    findings, lines, history, rule_set = run_head(
        tiny_spec, train, valid, lr=0.05, epochs=30, batch_size=9, head=HeadConfig(hidden=64)
    )
    assert {"Overfit", "Overtraining"} <= fired(findings)
    overfit = next(f for f in findings if f.rule == "Overfit")
    assert "above train_loss" in overfit.detail or "x train_loss" in overfit.detail
    assert history[-1]["train_loss"] < 0.01 < history[-1]["valid_loss"]
    # A rule that keeps firing extends its finding instead of printing a line every epoch.
    assert len([line for line in lines if line.startswith("rule=Overfit ")]) == 1
    assert overfit.last_epoch >= 6
    assert rule_set.fired_in("Overfit", 5)


def test_twenty_times_more_images_of_one_class_fires_class_imbalance(tiny_spec: Any) -> None:
    findings, _, _, _ = run_head(
        tiny_spec, clusters([200, 10, 100]), clusters([10] * 3, seed=1), rules="ClassImbalance"
    )
    (finding,) = findings
    assert finding.epoch == 1
    assert "'class 0' has 20.0x the training images of 'class 1' (200 vs 10; threshold_imbalance 10)" in finding.detail


def test_class_imbalance_names_the_classes_in_train(
    tiny_tree: Path, tiny_spec: Any, tmp_path: Path, dogclf_log: list[str]
) -> None:
    first = sorted((tiny_tree / "train").iterdir())[0]
    for image in sorted(first.iterdir()):  # the first class gets 8 + 8 * 12 = 104 images, the others keep 8: 13x
        for extra in range(12):
            (first / f"copy{extra}_{image.name}").write_bytes(image.read_bytes())
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "model",
        weights=None,
        config=TrainConfig(epochs=1, num_workers=0, device="cpu", head_solver="loop"),
        progress=False,
    )
    finding = next(Finding.parse(line) for line in lines if line.startswith("rule=ClassImbalance"))
    assert finding is not None
    assert "'Synthetic red discs' has 13.0x the training images of" in finding.detail


def test_a_zero_initialised_head_fires_vanishing_gradient_through_the_backbone(tiny_spec: Any, tiny_tree: Path) -> None:
    splits = load_splits(tiny_tree)
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None, freeze=False)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.zero_()
    rule_set = RuleSet(make_rules("VanishingGradient,WeightUpdateRatio"))
    config = TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")
    Trainer(
        model, train_samples=splits.train, preprocessing=tiny_spec.preprocessing, config=config, callbacks=[rule_set]
    ).fit()
    vanishing = next(f for f in rule_set.findings if f.rule == "VanishingGradient")
    assert (vanishing.epoch, vanishing.step) == (1, 0)
    assert "backbone.0.weight 0.00e+00" in vanishing.detail  # the gradient flows back through a zero head: none
    assert "WeightUpdateRatio" in fired(rule_set.findings)


def test_non_finite_values_fire_exploding_tensor_before_the_loop_stops(tiny_spec: Any) -> None:
    train = clusters([40] * 3)
    train.features[5, 3] = float("nan")
    from dogclf.errors import TrainingDivergedError

    rules = RuleSet(make_rules("ExplodingTensor", None), action="warn")
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, device="cpu")
    with pytest.raises(TrainingDivergedError, match="training loss became nan"):
        fit_head(model, train, None, config, callbacks=[rules])
    (finding,) = rules.findings  # at the step whose batch holds the NaN row, before the guard stopped training
    assert finding.epoch == 1
    assert "non-finite (NaN/inf) values" in finding.detail
    assert "logits" in finding.detail


def test_rules_action_stop_ends_training_after_the_epoch_of_a_finding(tiny_spec: Any, tmp_path: Path) -> None:
    noisy = clusters([40] * 3, noise=2.0)
    _, lines, history, _ = run_head(
        tiny_spec, noisy, None, rules="WeightUpdateRatio", lr=10.0, epochs=8, action="stop", out_dirs=(tmp_path,)
    )
    assert len(history) == 1
    assert lines[1] == "Stopping training after epoch 1: rule WeightUpdateRatio found an issue (--rules-action stop)"
    record = json.loads((tmp_path / RULES_FILE).read_text())
    assert record["stopped_by"]["rule"] == "WeightUpdateRatio"
    assert record["rules"][0]["status"] == "IssuesFound"


class _Sleep(Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        if state.step == 1:
            time.sleep(self.seconds)


def test_a_stalled_loop_fires_stalled_training_rule_and_stops_it(tiny_spec: Any, dogclf_log: list[str]) -> None:
    rule = StalledTrainingRule(threshold=0.2, stop_training_on_fire=True)
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    rule_set = RuleSet([rule])
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    config = TrainConfig(epochs=3, batch_size=16, device="cpu")
    history: list[dict[str, float]] = []

    def train_in_a_thread() -> None:  # not the main thread: the rule sets state.stop instead of interrupting
        history.extend(fit_head(model, clusters([40] * 3), None, config, callbacks=[rule_set, _Sleep(1.5)]))

    worker = threading.Thread(target=train_in_a_thread)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    finding = Finding.parse(lines[0])
    assert finding is not None
    assert finding.rule == "StalledTrainingRule"
    assert finding.step == 1
    assert "no training progress for" in finding.detail
    assert "since epoch 1 step 1 (train)" in finding.detail
    assert len(history) == 1  # stopped after the stalled epoch


def test_a_stalled_loop_in_the_main_thread_is_interrupted(tiny_spec: Any) -> None:
    rule_set = RuleSet([StalledTrainingRule(threshold=0.2)], action="stop")
    torch.manual_seed(0)
    model = build_model(tiny_spec, 3, weights=None)
    config = TrainConfig(epochs=3, batch_size=16, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        fit_head(model, clusters([40] * 3), None, config, callbacks=[rule_set, _Sleep(30.0)])
    rule_set.close()
    assert [f.rule for f in rule_set.findings] == ["StalledTrainingRule"]


def test_finding_lines_parse_back() -> None:
    finding = Finding("Overfit", 4, 812, "valid_loss 0.9120 is 35% above train_loss 0.6750\n(ratio_threshold 0.1)")
    line = finding.line()
    assert line == (
        "rule=Overfit status=IssuesFound epoch=4 step=812 detail=valid_loss 0.9120 is 35% above train_loss 0.6750 "
        "(ratio_threshold 0.1)"
    )
    parsed = Finding.parse(line)
    assert parsed is not None
    assert (parsed.rule, parsed.epoch, parsed.step) == ("Overfit", 4, 812)
    assert Finding.parse("epoch=1 train_loss=0.5") is None


def test_selections_and_parameters() -> None:
    assert select_rules("none") == []
    assert "WeightUpdateRatio" not in select_rules("default")
    assert select_rules("default,WeightUpdateRatio")[-1] == "WeightUpdateRatio"
    assert len(select_rules("all")) == len(BUILTIN_RULES)
    (rule,) = make_rules("Overfit", {"Overfit": {"ratio_threshold": 0.2}})
    assert rule.parameters()["ratio_threshold"] == 0.2
    assert parse_rule_param("WeightUpdateRatio.num_steps=none") == ("WeightUpdateRatio", "num_steps", None)
    assert parse_rule_param("ExplodingTensor.only_nan=true") == ("ExplodingTensor", "only_nan", True)
    assert parse_rule_param("Overtraining.patience_train=3") == ("Overtraining", "patience_train", 3)
    with pytest.raises(ValueError, match=r"Unknown rule .Overfitt.\. Use none, default, all, or rule names: Loss"):
        select_rules("Overfitt")
    with pytest.raises(ValueError, match="Rule Overfit has no parameter patienc; its parameters: start_step, pat"):
        make_rules("Overfit", {"Overfit": {"patienc": 2}})
    with pytest.raises(ValueError, match=r"add it to the selection \(e.g. --rules default,WeightUpdateRatio\)"):
        make_rules("default", {"WeightUpdateRatio": {"large_threshold": 5}})
    with pytest.raises(ValueError, match=r"use RULE\.PARAMETER=VALUE"):
        parse_rule_param("ratio_threshold=0.2")
    with pytest.raises(ValueError, match="Overfit patience must be > 0, got 0"):
        make_rules("Overfit", {"Overfit": {"patience": 0}})


def test_a_resumed_run_keeps_the_findings_of_its_finished_epochs(tiny_spec: Any, tmp_path: Path) -> None:
    noisy = clusters([40] * 3, noise=2.0)
    for epochs, resume in ((2, False), (3, True)):
        torch.manual_seed(0)
        model = build_model(tiny_spec, 3, weights=None)
        rule_set = RuleSet(make_rules("WeightUpdateRatio"), out_dirs=(tmp_path,))
        config = TrainConfig(epochs=epochs, batch_size=16, lr=10.0, device="cpu")
        fit_head(model, noisy, None, config, callbacks=[rule_set], checkpoint_path=tmp_path / "c.pt", resume=resume)
    record = json.loads((tmp_path / RULES_FILE).read_text())
    assert record["findings"][0]["epoch"] == 1  # found before the interruption, still there
    assert record["status"] == "Completed"
