"""How the head is fitted: the L-BFGS solver with cross-validated penalty, keep-best, early stopping, and the loop's
recipe (optimizers, learning-rate schedule with warm-up, label smoothing, class weights)."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import dogclf
from dogclf.cli import main
from dogclf.features.pipeline import FeatureSet
from dogclf.model import DogClassifierNet, HeadConfig, build_head
from dogclf.training.callbacks import Callback, TrainState
from dogclf.training.head import make_head_trainer
from dogclf.training.lbfgs import C_GRID, LbfgsFit, cross_validate_c, fit_lbfgs_head, fit_logistic, stratified_fold_ids
from dogclf.training.schedule import balanced_class_weights, lr_factor, make_loss, make_optimizer

EPOCH_LINE = re.compile(r"^epoch=(\d+) train_loss=([0-9.]+) valid_loss=([0-9.]+) valid_top1=([0-9.]+)", re.M)


def _blobs(n: int, classes: int, width: int, *, seed: int, noise: float = 1.0) -> FeatureSet:
    """Gaussian blobs around random class centres: features a linear head can learn."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, width, generator=torch.Generator().manual_seed(99)) * 2
    labels = torch.arange(n) % classes
    features = centres[labels] + noise * torch.randn(n, width, generator=generator)
    return FeatureSet(features=features, labels=labels)


def _config(**changes: Any) -> dogclf.TrainConfig:
    settings: dict[str, Any] = {"batch_size": 8, "num_workers": 0, "device": "cpu", **changes}
    return dogclf.TrainConfig(**settings)


def _model(width: int, classes: int, head: HeadConfig | None = None) -> DogClassifierNet:
    torch.manual_seed(0)
    return DogClassifierNet(torch.nn.Identity(), build_head(width, classes, head or HeadConfig()), frozen=True)


def _train(data: Path, out: Path, **kwargs: Any) -> dogclf.TrainResult:
    config = kwargs.pop("config", None) or _config()
    return dogclf.train(data, "tinynet", out, config=config, weights=None, progress=False, **kwargs)


# --- the L-BFGS head ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_lbfgs_fit_is_scikit_learns_logistic_regression_at_the_same_c(c: float) -> None:
    data = _blobs(300, 4, 12, seed=1, noise=2.0)

    weight, bias, _, _ = fit_logistic(data.features.double(), data.labels, num_classes=4, c=c, tol=1e-8)

    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(
        data.features.double().numpy(), data.labels.numpy()
    )
    np.testing.assert_allclose(weight.numpy(), reference.coef_, atol=2e-4)
    np.testing.assert_allclose(bias.numpy(), reference.intercept_, atol=2e-4)


def test_cross_validation_picks_a_strong_penalty_for_few_noisy_samples_and_a_weak_one_for_many_clean() -> None:
    few_noisy = _blobs(40, 4, 64, seed=2, noise=6.0)
    many_clean = _blobs(400, 4, 8, seed=3, noise=0.5)

    noisy = cross_validate_c(few_noisy.features, few_noisy.labels, num_classes=4, folds=4)
    clean = cross_validate_c(many_clean.features, many_clean.labels, num_classes=4, folds=4)

    assert noisy.best_c < clean.best_c
    assert noisy.best_c in C_GRID
    assert clean.best_c in C_GRID
    assert noisy.log_loss[noisy.best_index] == min(noisy.log_loss)
    assert noisy.grid == sorted(noisy.grid)
    assert len(noisy.grid) == len(noisy.log_loss) == len(noisy.top1)


def test_cross_validation_keeps_each_rows_out_of_fold_logits_at_the_chosen_penalty() -> None:
    data = _blobs(120, 3, 6, seed=5, noise=2.5)

    cv = cross_validate_c(data.features, data.labels, num_classes=3, folds=4, seed=1)

    assert cv.oof_logits is not None
    assert cv.oof_logits.shape == (120, 3)
    pooled = float(torch.nn.functional.cross_entropy(cv.oof_logits, data.labels))
    assert pooled == pytest.approx(cv.log_loss[cv.best_index], rel=1e-5)  # the CV score is these logits' log-loss
    fold = stratified_fold_ids(data.labels, 4, 1) == 0  # fold 0's rows come from the fit on the other three folds
    weight, bias, _, _ = fit_logistic(
        data.features[~fold], data.labels[~fold], num_classes=3, c=cv.best_c, tol=1e-8, max_iter=5000
    )
    expected = data.features[fold] @ weight.T + bias
    assert torch.allclose(cv.oof_logits[fold], expected, atol=2e-2)
    fit = LbfgsFit(c=cv.best_c, chosen_by="cv", iterations=1, converged=True, seconds=0, cv=cv)
    assert "oof_logits" not in json.dumps(fit.to_dict())  # config.json keeps the table, not the logits


def test_extra_rows_join_the_final_lbfgs_fit_but_not_the_cross_validation() -> None:
    photos = _blobs(90, 3, 6, seed=6, noise=2.0)
    views = _blobs(60, 3, 6, seed=7, noise=3.0)
    model = _model(6, 3)

    _, fit = fit_lbfgs_head(model, photos, None, _config(cv_folds=3), extra=views)

    assert fit.cv is not None
    assert fit.cv.oof_logits is not None
    assert len(fit.cv.oof_logits) == 90  # the penalty is cross-validated on the photos alone
    both_x, both_y = torch.cat([photos.features, views.features]), torch.cat([photos.labels, views.labels])
    assert fit.final_c == pytest.approx(fit.c * 90 / 150)  # the same penalty per photo as the CV chose
    weight, bias, _, _ = fit_logistic(both_x, both_y, num_classes=3, c=fit.final_c, tol=1e-8, max_iter=5000)
    layer = model.head[0]
    assert torch.allclose(layer.weight.detach(), weight, atol=2e-3)
    assert torch.allclose(layer.bias.detach(), bias, atol=2e-3)


def test_cross_validation_needs_enough_images_per_class_and_says_what_to_pass() -> None:
    data = _blobs(9, 3, 4, seed=4)  # 3 per class

    with pytest.raises(ValueError, match=r"5-fold .* at least 5 training images per class; the smallest class has 3"):
        cross_validate_c(data.features, data.labels, num_classes=3, folds=5)


def test_lbfgs_head_reports_one_epoch_line_through_the_callbacks_with_its_metrics() -> None:
    train, valid = _blobs(120, 3, 6, seed=5), _blobs(30, 3, 6, seed=6)
    model = _model(6, 3)
    seen: list[Mapping[str, float]] = []

    class Record(Callback):
        def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
            seen.append(dict(metrics))

    history, fit = fit_lbfgs_head(model, train, valid, _config(cv_folds=3), callbacks=[Record()])

    assert seen == history
    assert len(history) == 1
    assert history[0]["epoch"] == 1
    logits = model.head(valid.features).detach()
    assert history[0]["valid_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, valid.labels)))
    assert history[0]["valid_top1"] == pytest.approx(float((logits.argmax(1) == valid.labels).float().mean()))
    assert fit.chosen_by == "cv"
    assert fit.c == fit.cv.best_c


def test_default_train_fits_a_linear_head_by_lbfgs_and_records_the_chosen_penalty(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=3, per_split=(10, 4, 3), size=40, seed=1)
    dogclf_log.clear()  # from here on
    messages = dogclf_log

    result = _train(data, tmp_path / "model", config=_config(cv_folds=3))

    assert [int(m.group(1)) for m in EPOCH_LINE.finditer("\n".join(messages))] == [1]  # the SageMaker metric line
    assert not (tmp_path / "model" / "checkpoint.pt").exists()  # nothing to resume: the fit takes seconds
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    fit = config["training"]["head_fit"]
    assert config["training"]["head_solver_used"] == "lbfgs"
    assert fit["solver"] == "lbfgs"
    assert fit["chosen_by"] == "cv"
    assert fit["c"] in C_GRID
    assert fit["cv"]["folds"] == 3
    assert fit["cv"]["best_log_loss"] == min(fit["cv"]["log_loss"])
    summary = next(m for m in messages if m.startswith("L-BFGS head:"))
    assert f"C={fit['c']:g} chosen by 3-fold cross-validation" in summary
    assert result.final["valid_top1"] == config["metrics"]["final"]["valid_top1"]
    assert "calibration" not in config  # 12 validation images: too few to fit a temperature, as for the loop
    assert any(m.startswith("calibration: skipped") for m in messages)
    assert result.test is not None
    assert result.test["n"] == 9


def test_lbfgs_with_a_given_penalty_skips_cross_validation_and_resume_refits(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    messages = dogclf_log
    first = _train(tiny_tree, tmp_path / "model", config=_config(head_solver="lbfgs", penalty_c=0.1))

    again = _train(
        tiny_tree,
        tmp_path / "model",
        config=_config(head_solver="lbfgs", penalty_c=0.1),
        resume=True,
    )

    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["training"]["head_fit"]["chosen_by"] == "given"
    assert config["training"]["head_fit"]["cv"] is None
    assert any("--resume: an L-BFGS head has no checkpoint" in m for m in messages)
    assert again.final["valid_loss"] == pytest.approx(first.final["valid_loss"])


@pytest.mark.parametrize(
    ("config", "head", "message"),
    [
        (_config(head_solver="lbfgs", augment=True), HeadConfig(), "with --no-freeze or --augment"),
        (_config(head_solver="lbfgs"), HeadConfig(hidden=8), "--head-hidden and --dropout need --head-solver loop"),
    ],
)
def test_lbfgs_where_it_cannot_fit_fails_before_reading_the_data(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, config: dogclf.TrainConfig, head: HeadConfig, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _train(tmp_path / "no-such-folder", tmp_path / "model", config=config, head=head)


def test_auto_solver_trains_a_hidden_head_with_the_loop(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    result = _train(tiny_tree, tmp_path / "m", config=_config(epochs=2), head=HeadConfig(hidden=4))

    assert [int(h["epoch"]) for h in result.history] == [1, 2]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["head_solver_used"] == "loop"


# --- keep-best and early stopping --------------------------------------------------------------------------------


def _overfitting_features() -> tuple[FeatureSet, FeatureSet]:
    """Valid labels contradict train: the better the head fits train, the worse its validation loss."""
    train = _blobs(60, 3, 5, seed=7, noise=0.3)
    valid = FeatureSet(features=train.features[:30].clone(), labels=(train.labels[:30] + 1) % 3)
    return train, valid


class _Snapshots(Callback):
    def __init__(self) -> None:
        self.heads: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        self.heads.append({k: v.clone() for k, v in state.model.head.state_dict().items()})


@pytest.mark.parametrize(("keep", "expected_epoch"), [("best", 1), ("last", 4)])
def test_keep_saves_the_best_epoch_by_validation_loss_or_the_last(keep: str, expected_epoch: int) -> None:
    train, valid = _overfitting_features()
    model, snapshots = _model(5, 3), _Snapshots()
    trainer = make_head_trainer(
        model, train, valid, _config(head_solver="loop", epochs=4, lr=0.05, keep=keep), callbacks=[snapshots]
    )

    history = trainer.fit()

    losses = [h["valid_loss"] for h in history]
    assert losses == sorted(losses)  # it got worse every epoch
    assert trainer.kept_epoch == expected_epoch
    for name, value in model.head.state_dict().items():
        torch.testing.assert_close(value, snapshots.heads[expected_epoch - 1][name])


def test_patience_stops_training_when_validation_loss_stops_improving() -> None:
    train, valid = _overfitting_features()
    trainer = make_head_trainer(_model(5, 3), train, valid, _config(head_solver="loop", epochs=10, lr=0.05, patience=2))

    history = trainer.fit()

    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    assert trainer.stopped_early == 3
    assert trainer.kept_epoch == 1


def test_keep_best_survives_a_resume(tmp_path: Path) -> None:
    train, valid = _overfitting_features()
    config = _config(head_solver="loop", epochs=4, lr=0.05)
    whole = make_head_trainer(_model(5, 3), train, valid, config)
    whole.fit()

    resumed = _interrupted_then_resumed(config, tmp_path / "c.pt", shape=(5, 3), train=train, valid=valid)

    assert resumed.kept_epoch == whole.kept_epoch == 1
    for name, value in whole.model.head.state_dict().items():
        torch.testing.assert_close(resumed.model.head.state_dict()[name], value)


def test_train_records_the_kept_epochs_metrics_as_final(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    result = _train(tiny_tree, tmp_path / "m", config=_config(head_solver="loop", epochs=4, lr=0.5))

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    best = min(result.history, key=lambda h: h["valid_loss"])
    assert config["training"]["kept_epoch"] == int(best["epoch"])
    assert config["metrics"]["final"] == pytest.approx(best)
    assert result.final == pytest.approx(best)


# --- the loop's recipe -------------------------------------------------------------------------------------------


class _Lrs(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("schedule", "warmup_epochs", "expected"),
    [
        ("constant", 0.0, [0.1] * 8),
        ("constant", 1.0, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1]),
        ("cosine", 0.0, [0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]),
        (
            "cosine",
            0.5,
            [0.05, 0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)],
        ),
    ],
)
def test_learning_rate_per_step_follows_the_schedule(
    schedule: str, warmup_epochs: float, expected: list[float]
) -> None:
    lrs = _Lrs()
    train = _blobs(32, 2, 3, seed=8)  # batch 8: 4 steps an epoch, 8 in 2 epochs
    config = _config(head_solver="loop", epochs=2, lr=0.1, lr_schedule=schedule, warmup_epochs=warmup_epochs)

    make_head_trainer(_model(3, 2), train, None, config, callbacks=[lrs]).fit()

    assert lrs.lrs == pytest.approx(expected)


class _InterruptAfterEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def _interrupted_then_resumed(config: dogclf.TrainConfig, checkpoint: Path, **data: Any) -> Any:
    """Runs ``config`` until a Ctrl-C after epoch 1, then resumes it; returns the resumed trainer (fitted)."""
    with pytest.raises(KeyboardInterrupt):
        make_head_trainer(
            _model(*data["shape"]),
            data["train"],
            data["valid"],
            config,
            checkpoint_path=checkpoint,
            callbacks=[_InterruptAfterEpoch(1)],
        ).fit()
    resumed = make_head_trainer(
        _model(*data["shape"]),
        data["train"],
        data["valid"],
        config,
        checkpoint_path=checkpoint,
        callbacks=data.get("callbacks", []),
    )
    resumed.resume()
    resumed.fit()
    return resumed


def test_schedule_on_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    train = _blobs(32, 2, 3, seed=8)
    config = _config(head_solver="loop", epochs=2, lr=0.1, lr_schedule="cosine", warmup_epochs=0.5)
    whole, second = _Lrs(), _Lrs()
    make_head_trainer(_model(3, 2), train, None, config, callbacks=[whole]).fit()

    _interrupted_then_resumed(config, tmp_path / "c.pt", shape=(3, 2), train=train, valid=None, callbacks=[second])

    assert second.lrs == pytest.approx(whole.lrs[4:])


def test_lr_factor_warms_up_linearly_then_decays_to_near_zero() -> None:
    factors = [lr_factor(s, total_steps=100, warmup=10, schedule="cosine") for s in range(100)]

    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert factors[-1] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


@pytest.mark.parametrize(
    ("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizer_choice(name: str, kind: type) -> None:
    optimizer = make_optimizer(_model(3, 2), _config(optimizer=name, weight_decay=0.01, momentum=0.5))

    assert type(optimizer) is kind
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.5


def test_adamw_decays_weights_that_have_no_gradient_and_adam_does_not_move_them() -> None:
    def step(name: str) -> torch.Tensor:
        model = _model(3, 2)
        before = model.head[0].weight.detach().clone()
        optimizer = make_optimizer(model, _config(optimizer=name, lr=0.1, weight_decay=0.5))
        model.head[0].weight.grad = torch.zeros_like(before)
        model.head[0].bias.grad = torch.zeros(2)
        optimizer.step()
        return model.head[0].weight.detach() / before

    torch.testing.assert_close(step("adamw"), torch.full((2, 3), 1 - 0.1 * 0.5))  # decoupled: w *= 1 - lr * wd


def test_balanced_class_weights_count_the_classes() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)

    weights = balanced_class_weights(labels, 4)  # class 3 has no samples

    torch.testing.assert_close(weights, torch.tensor([12 / 18, 12 / 9, 12 / 9, 1.0]))


def test_class_weights_and_label_smoothing_change_the_training_loss() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, -1.0]])

    plain = make_loss(_config(), labels, 2)(logits, labels)
    balanced = make_loss(_config(class_weight="balanced"), labels, 2)(logits, labels)
    smoothed = make_loss(_config(label_smoothing=0.2), labels, 2)(logits, labels)

    weights = torch.tensor([4 / 6, 4 / 2])
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (weights[labels] * per_row).sum() / weights[labels].sum()
    torch.testing.assert_close(balanced, expected)
    assert balanced > plain  # the badly classified minority row counts more
    assert smoothed > plain  # confident right answers are penalised


def test_balanced_class_weights_predict_a_minority_class_more_often() -> None:
    generator = torch.Generator().manual_seed(9)
    labels = torch.tensor([0] * 90 + [1] * 10)
    features = torch.randn(100, 2, generator=generator) + labels[:, None].float() * 1.0  # overlapping classes

    def minority_predicted(class_weight: str) -> int:
        model = _model(2, 2)
        config = _config(head_solver="lbfgs", penalty_c=1.0, class_weight=class_weight)
        fit_lbfgs_head(model, FeatureSet(features, labels), None, config)
        return int((model.head(features).argmax(1) == 1).sum())

    assert minority_predicted("balanced") > 2 * minority_predicted("none")


def test_label_smoothing_shrinks_the_lbfgs_heads_weights() -> None:
    data = _blobs(90, 3, 4, seed=10, noise=0.2)

    def norm(smoothing: float) -> float:
        model = _model(4, 3)
        fit_lbfgs_head(model, data, None, _config(head_solver="lbfgs", penalty_c=100.0, label_smoothing=smoothing))
        return float(model.head[0].weight.detach().norm())

    assert norm(0.2) < 0.5 * norm(0.0)


# --- configuration and command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head_solver": "newton"}, "head_solver must be one of auto, lbfgs, loop; got 'newton'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adamw, sgd"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine"),
        ({"class_weight": "auto"}, "class_weight must be one of none, balanced"),
        ({"keep": "first"}, "keep must be one of best, last"),
        ({"penalty_c": 0}, "penalty C must be a number > 0"),
        ({"penalty_c": float("nan")}, "penalty C must be a number > 0"),
        ({"cv_folds": 1}, "cv_folds must be an int >= 2"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"warmup_epochs": -1}, "warmup_epochs must be a number >= 0"),
        ({"label_smoothing": 1.0}, "label smoothing must be in [0, 1)"),
        ({"patience": 0}, "patience must be an int >= 1"),
    ],
)
def test_bad_head_settings_are_refused_with_the_value(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dogclf.TrainConfig(**changes)


def test_cli_passes_every_head_option_to_the_run(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(tiny_tree), "--out", str(tmp_path / "m"), "--backbone", "tinynet"]
    args += ["--weights", "none", "--workers", "0", "--no-progress", "--batch-size", "8", "--epochs", "3"]
    args += ["--head-solver", "loop", "--optimizer", "sgd", "--momentum", "0.8", "--lr-schedule", "cosine"]
    args += ["--warmup-epochs", "0.5", "--label-smoothing", "0.1", "--class-weight", "balanced", "--keep", "last"]
    args += ["--patience", "5", "--penalty-c", "0.3", "--cv-folds", "3"]

    code = main(args)

    out = capsys.readouterr().out
    assert code == 0
    training = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    expected = {
        "head_solver": "loop",
        "optimizer": "sgd",
        "momentum": 0.8,
        "lr_schedule": "cosine",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "class_weight": "balanced",
        "keep": "last",
        "patience": 5,
        "penalty_c": 0.3,
        "cv_folds": 3,
    }
    assert {k: training[k] for k in expected} == expected
    assert training["kept_epoch"] == 3
    assert "SGD (momentum 0.8) lr 0.001, cosine schedule, 0.5 warm-up epochs, label smoothing 0.1, balanced" in out


def test_cli_rejects_a_bad_head_option_without_a_traceback(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(tiny_tree), "--out", str(tmp_path / "m"), "--label-smoothing", "1.5"])

    assert code == 2
    assert "dogclf train: error: label smoothing must be in [0, 1), got 1.5" in capsys.readouterr().err
