"""dogclf tune: the declarative search space, the resumable Optuna study, its outputs and the CLI."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dogclf
from dogclf.cli import main
from dogclf.errors import DogclfError
from dogclf.tuning import (
    DEFAULT_SPACE,
    Categorical,
    FloatRange,
    IntRange,
    SearchSpace,
    SearchSpaceError,
    load_space,
)
from dogclf.tuning.study import TuneError, tune

TINY_SPACE = SearchSpace(
    {
        "lr": FloatRange(1e-3, 1e-1, log=True),
        "batch_size": Categorical([4, 8]),
        "epochs": IntRange(1, 3),
        "weight_decay": FloatRange(1e-6, 1e-3, log=True),
        "dropout": FloatRange(0.0, 0.3),
    }
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tune(data: Path, out: Path, cache: Path, *, trials: int, **kwargs: Any) -> dogclf.tuning.TuneResult:
    kwargs.setdefault("space", TINY_SPACE)
    return tune(data, "tinynet", out, trials=trials, weights=None, cache_dir=cache, device="cpu", **kwargs)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _stored_trials(out: Path, name: str = "dogclf-tinynet") -> list[Any]:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}").trials


def _interrupt_trial(monkeypatch: pytest.MonkeyPatch, *, call: int, exc: BaseException) -> None:
    """Makes the ``call``-th head fit (1-based) raise ``exc`` after its first epoch, as a Ctrl-C or a crash would."""
    from dogclf.training import head as head_training

    real = head_training.fit_head
    calls = {"n": 0}

    def fit_head(*args: Any, on_epoch: Any = None, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] != call:
            return real(*args, on_epoch=on_epoch, **kwargs)

        def stop(metrics: dict[str, float]) -> None:
            raise exc

        return real(*args, on_epoch=stop, **kwargs)

    monkeypatch.setattr(head_training, "fit_head", fit_head)


# --- the search space ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FloatRange(0.0, 1.0, log=True), "log-scale FloatRange needs low > 0"),
        (lambda: FloatRange(1.0, 1.0), "low < high"),
        (lambda: FloatRange(0.0, float("nan")), "finite numbers"),
        (lambda: IntRange(1, 10, step=4), "multiple of step"),
        (lambda: IntRange(1.5, 3), "must be an integer"),  # type: ignore[arg-type]
        (lambda: Categorical([]), "at least one choice"),
        (lambda: Categorical([8, 8.0]), "distinct"),
        (lambda: Categorical([None]), "numbers, strings or booleans"),
        (lambda: SearchSpace({}), "at least one hyperparameter"),
        (lambda: SearchSpace({"momentum": FloatRange(0.1, 0.9)}), "Unknown hyperparameter 'momentum'"),
        (lambda: SearchSpace({"lr": FloatRange(-1.0, 0.1)}), "'lr'"),
        (lambda: SearchSpace({"dropout": FloatRange(0.0, 1.0)}), "in [0, 1)"),
        (lambda: SearchSpace({"epochs": FloatRange(1.0, 5.0)}), "takes integers"),
        (lambda: SearchSpace({"batch_size": Categorical([0, 32])}), ">= 1"),
        (lambda: SearchSpace({"batch_size": Categorical(["32"])}), "must be an integer"),
    ],
)
def test_space_rejects_bad_ranges_with_a_clear_message(build: Any, message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        build()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_space_json_round_trip_and_file(tmp_path: Path) -> None:
    for space in (DEFAULT_SPACE, TINY_SPACE):
        text = json.dumps(space.to_dict())
        assert SearchSpace.from_dict(json.loads(text)) == space
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE.to_dict()), encoding="utf-8")
    assert load_space(path) == TINY_SPACE
    # The documented short form: defaults for log and step may be left out.
    short = {"lr": {"type": "float", "low": 0.001, "high": 0.1}, "epochs": {"type": "int", "low": 2, "high": 4}}
    assert SearchSpace.from_dict(short) == SearchSpace({"lr": FloatRange(1e-3, 0.1), "epochs": IntRange(2, 4)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not readable JSON"),
        ('{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}", "not readable JSON: maximum recursion depth"),
        ("[1, 2]", "expected a JSON object"),
        ('{"lr": {"type": "uniform", "low": 0.1, "high": 1}}', "'lr'"),
        ('{"lr": {"type": "float", "low": 0.1}}', "missing high"),
        ('{"lr": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"}}', "unknown key(s) scale"),
    ],
)
def test_load_space_errors_name_the_file_and_the_problem(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "space.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(SearchSpaceError) as info:
        load_space(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_space_contains() -> None:
    point = {"lr": 0.01, "batch_size": 64, "epochs": 3, "weight_decay": 1e-4, "dropout": 0.1, "head_solver": "loop"}
    assert DEFAULT_SPACE.contains(point)
    assert not DEFAULT_SPACE.contains({"lr": 0.01})
    assert not Categorical([1, 2]).contains(True)
    assert IntRange(2, 8, step=2).contains(6)
    assert not IntRange(2, 8, step=2).contains(5)


def test_hyperparameters_outside_the_space_keep_the_train_defaults() -> None:
    from dogclf.tuning.objective import FIXED_DEFAULTS

    config, head = dogclf.TrainConfig(), dogclf.HeadConfig()
    loop = {k: v for k, v in FIXED_DEFAULTS.items() if k not in ("head_solver", "dropout", "head_hidden")}
    assert loop == {k: getattr(config, k) for k in loop}
    assert (FIXED_DEFAULTS["dropout"], FIXED_DEFAULTS["head_hidden"]) == (head.dropout, head.hidden)
    assert FIXED_DEFAULTS["head_solver"] == "loop"  # a space without head_solver searches the loop
    assert set(FIXED_DEFAULTS) == set(dogclf.tuning.TUNABLE)


def test_space_module_does_not_import_optuna() -> None:
    code = (
        "import sys, json; import dogclf.tuning, dogclf.tuning.space, dogclf.cli.app; dogclf.cli.app._parser(); "
        "print(json.dumps([m for m in ('optuna', 'torch', 'matplotlib', 'sqlalchemy') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


# --- the study ----------------------------------------------------------------------------------------------------


def test_tiny_tune_writes_best_params_trials_and_history(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    result = _tune(tiny_tree, tmp_path / "tune", tmp_path / "cache", trials=5)

    assert result.ran == 5
    assert sum(result.counts.values()) == 5
    assert set(result.counts) <= {"COMPLETE", "PRUNED"}
    best = json.loads((tmp_path / "tune" / "best_params.json").read_text(encoding="utf-8"))
    assert best["params"] == result.best_params
    assert TINY_SPACE.contains(best["params"])
    assert best["value"] == pytest.approx(result.best_value)
    assert best["trial"] == result.best_trial
    assert best["study_name"] == "dogclf-tinynet"
    assert best["storage"] == f"sqlite:///{(tmp_path / 'tune' / 'study.db').resolve()}"
    assert best["hyperparameters"]["head_hidden"] == 0  # not searched: held at the train default

    rows = _rows(tmp_path / "tune")
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert max(float(r["value"]) for r in complete) == pytest.approx(result.best_value)
    for row in rows:
        params = {
            "lr": float(row["lr"]),
            "batch_size": int(row["batch_size"]),
            "epochs": int(row["epochs"]),
            "weight_decay": float(row["weight_decay"]),
            "dropout": float(row["dropout"]),
        }
        assert TINY_SPACE.contains(params), row
        assert float(row["seconds"]) >= 0
        if row["state"] == "COMPLETE":
            assert int(row["last_epoch"]) == params["epochs"]  # the objective is the last epoch's metric

    png = (tmp_path / "tune" / "history.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 5_000

    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 5
    assert all("best: trial" in line for line in trial_lines if " COMPLETE " in line)


def test_rerun_continues_the_study(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    out = tmp_path / "tune"
    _tune(tiny_tree, out, tmp_path / "cache", trials=3)
    first = [(t.number, t.state.name, t.value, t.params) for t in _stored_trials(out)]
    assert len(first) == 3

    dogclf_log.clear()  # from here on

    lines = dogclf_log
    result = _tune(tiny_tree, out, tmp_path / "cache", trials=5)
    assert result.ran == 2
    assert any("3 finished trial(s) stored, running 2 more" in line for line in lines)
    assert any("3 cached, 0 extracted" in line for line in lines)  # the feature cache served the rerun
    stored = _stored_trials(out)
    assert len(stored) == 5
    assert [(t.number, t.state.name, t.value, t.params) for t in stored[:3]] == first
    assert len(_rows(out)) == 5

    # The target is reached: a third run adds nothing and extracts nothing.
    lines.clear()
    assert _tune(tiny_tree, out, tmp_path / "cache", trials=5).ran == 0
    assert not any(line.startswith("features:") for line in lines)


def test_interrupted_trial_keeps_finished_ones_and_a_rerun_continues(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tune"
    _interrupt_trial(monkeypatch, call=3, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _tune(tiny_tree, out, tmp_path / "cache", trials=5)
    monkeypatch.undo()

    stored = _stored_trials(out)
    assert [t.state.name for t in stored] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert stored[2].user_attrs["error"] == "interrupted (Ctrl-C)"
    assert (out / "best_params.json").is_file()  # outputs of the finished trials are written on the way out
    kept = [(t.params, t.value) for t in stored[:2]]

    result = _tune(tiny_tree, out, tmp_path / "cache", trials=4)
    assert result.ran == 2
    stored = _stored_trials(out)
    assert [(t.params, t.value) for t in stored[:2]] == kept
    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 4
    assert result.counts["FAIL"] == 1


def test_failing_trial_is_recorded_and_the_study_goes_on(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tune"
    _interrupt_trial(monkeypatch, call=2, exc=RuntimeError("CUDA out of memory (simulated)"))
    result = _tune(tiny_tree, out, tmp_path / "cache", trials=4)
    assert result.counts["FAIL"] == 1
    assert result.ran == 4  # the failed trial used up one of this run's trials; a rerun would retry it
    failed = [r for r in _rows(out) if r["state"] == "FAIL"]
    assert len(failed) == 1
    assert failed[0]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert failed[0]["value"] == ""


def test_a_trial_left_running_by_a_killed_process_is_marked_failed(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    import optuna

    out = tmp_path / "tune"
    _tune(tiny_tree, out, tmp_path / "cache", trials=2)
    study = optuna.load_study(study_name="dogclf-tinynet", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # what a process killed mid-trial leaves behind: a RUNNING trial
    result = _tune(tiny_tree, out, tmp_path / "cache", trials=3)
    assert result.counts["FAIL"] == 1
    assert result.ran == 1
    assert "abandoned" in next(r for r in _rows(out) if r["state"] == "FAIL")["error"]


def test_pruning_stops_poor_trials_early(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path) -> None:
    space = SearchSpace({"lr": FloatRange(1e-6, 1e-1, log=True), "epochs": Categorical([4])})
    result = _tune(
        tiny_tree,
        tmp_path / "tune",
        tmp_path / "cache",
        trials=10,
        space=space,
        metric="valid_loss",  # continuous: top-1 on 9 valid images ties too often to rank trials
        pruner_startup_trials=1,
        pruner_warmup_epochs=0,
    )
    assert result.counts.get("PRUNED", 0) >= 1
    for row in _rows(tmp_path / "tune"):
        if row["state"] == "PRUNED":
            assert row["value"] == ""
            assert 1 <= int(row["last_epoch"]) < 4
            assert row["last_reported"] != ""


def test_a_study_started_with_another_setup_is_not_mixed(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    _tune(tiny_tree, out, tmp_path / "cache", trials=1)
    other = SearchSpace({**TINY_SPACE.params, "epochs": IntRange(1, 5)})
    with pytest.raises(TuneError, match="different setup") as info:
        _tune(tiny_tree, out, tmp_path / "cache", trials=2, space=other)
    assert "space" in str(info.value)
    with pytest.raises(TuneError, match="minimize"):
        _tune(tiny_tree, out, tmp_path / "cache", trials=2, metric="valid_loss")
    assert len(_stored_trials(out)) == 1


def test_shared_storage_url_lets_two_runs_fill_one_study(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one = _tune(tiny_tree, tmp_path / "one", tmp_path / "cache", trials=2, storage=url, study_name="woof")
    two = _tune(tiny_tree, tmp_path / "two", tmp_path / "cache", trials=4, storage=url, study_name="woof")
    assert (one.ran, two.ran) == (2, 2)
    assert sum(two.counts.values()) == 4
    assert not (tmp_path / "one" / "study.db").exists()
    assert json.loads((tmp_path / "two" / "best_params.json").read_text(encoding="utf-8"))["storage"] == url


def test_train_best_repeats_the_best_trial(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    result = _tune(tiny_tree, tmp_path / "tune", tmp_path / "cache", trials=4, train_best=True)
    assert result.model_dir == tmp_path / "tune" / "model"
    # The final training reads the tuning's features from the cache; only the test split (never tuned on) is new.
    final_run = lines[next(i for i, line in enumerate(lines) if line.startswith("Training the final model")) :]
    assert any("33 cached, 9 extracted" in line for line in final_run), final_run
    classifier = dogclf.load_model(result.model_dir)
    training = classifier.config["training"]
    params = result.best_params
    assert training["lr"] == pytest.approx(params["lr"])
    assert training["epochs"] == params["epochs"]
    assert training["batch_size"] == params["batch_size"]
    assert training["weight_decay"] == pytest.approx(params["weight_decay"])
    assert classifier.config["head"]["dropout"] == pytest.approx(params["dropout"])
    # Same seed, same features, same RNG state at the head's birth: the final model is the best trial's model.
    best = json.loads(result.best_params_path.read_text(encoding="utf-8"))
    assert best["model_dir"] == str(result.model_dir)
    assert best["model_final"]["valid_top1"] == pytest.approx(result.best_value)
    assert len(classifier.predict(sorted((tiny_tree / "test").rglob("*.jpg"))[:2], top_k=1)) == 2


def test_tune_argument_errors(tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="--trials must be an integer >= 1"):
        _tune(tiny_tree, tmp_path / "t", tmp_path / "cache", trials=0)
    with pytest.raises(TuneError, match="Unknown tuning metric"):
        _tune(tiny_tree, tmp_path / "t", tmp_path / "cache", trials=1, metric="top5")
    with pytest.raises(TuneError, match="database URL"):
        _tune(tiny_tree, tmp_path / "t", tmp_path / "cache", trials=1, storage="study.db")
    flat = tmp_path / "flat"
    for folder in (tiny_tree / "train").iterdir():
        (flat / folder.name).mkdir(parents=True)
        for image in folder.iterdir():
            (flat / folder.name / image.name).write_bytes(image.read_bytes())
    with pytest.raises(DogclfError, match="--valid-fraction"):
        _tune(flat, tmp_path / "t", tmp_path / "cache", trials=1)


# --- the command line ---------------------------------------------------------------------------------------------


def _cli_args(tiny_tree: Path, tmp_path: Path, *extra: str) -> list[str]:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE.to_dict()), encoding="utf-8")
    return [
        "tune",
        "--data",
        str(tiny_tree),
        "--backbone",
        "tinynet",
        "--weights",
        "none",
        "--out",
        str(tmp_path / "tune"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--space",
        str(space),
        "--device",
        "cpu",
        *extra,
    ]


def test_cli_tune(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli_args(tiny_tree, tmp_path, "--trials", "3")) == 0
    out = capsys.readouterr().out
    assert "Best hyperparameters:" in out
    assert out.count("\ntrial ") + out.startswith("trial ") == 3
    assert len(_rows(tmp_path / "tune")) == 3


def test_cli_ctrl_c_exits_130_with_the_command_that_continues(
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _interrupt_trial(monkeypatch, call=2, exc=KeyboardInterrupt())
    argv = _cli_args(tiny_tree, tmp_path, "--trials", "3")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Interrupted. The finished trials are stored in" in err
    assert str(tmp_path / "tune" / "study.db") in err
    assert "dogclf tune --data" in err
    monkeypatch.undo()
    assert main(argv) == 0  # the printed command, rerun, finishes the study
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in _rows(tmp_path / "tune")) == 3


def test_cli_errors_exit_2(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"momentum": {"type": "float", "low": 0.1, "high": 0.9}}', encoding="utf-8")
    assert main([*_cli_args(tiny_tree, tmp_path, "--trials", "2"), "--space", str(bad)]) == 2  # the last one counts
    assert "Unknown hyperparameter 'momentum'" in capsys.readouterr().err
    assert main(_cli_args(tiny_tree, tmp_path, "--trials", "2", "--storage", "nosuchdb://x")) == 2
    assert "Cannot open the study storage" in capsys.readouterr().err


# --- the defaults trial, the solver and the penalty range ---------------------------------------------------------


def test_the_first_trial_is_the_train_defaults_so_a_study_is_never_worse(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, dogclf_log: list[str]
) -> None:
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    result = _tune(tiny_tree, tmp_path / "tune", tmp_path / "cache", trials=3)

    first = _stored_trials(tmp_path / "tune")[0]
    # TINY_SPACE has no head_solver: the loop's defaults, each moved into the space (batch 32 -> 8, epochs 5 -> 3,
    # weight decay 0 -> the low end 1e-6).
    assert first.params == {"lr": 1e-3, "batch_size": 8, "epochs": 3, "weight_decay": 1e-6, "dropout": 0.0}
    assert first.user_attrs["dogclf_defaults"] is True
    assert any(line.startswith("trial 0 (the dogclf train defaults) COMPLETE") for line in lines)
    assert result.best_value >= first.value

    # A rerun does not queue the defaults again.
    _tune(tiny_tree, tmp_path / "tune", tmp_path / "cache", trials=4)
    assert sum(bool(t.user_attrs.get("dogclf_defaults")) for t in _stored_trials(tmp_path / "tune")) == 1


def test_with_the_default_space_the_defaults_trial_is_the_lbfgs_head_and_train_best_repeats_it(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    space = SearchSpace({"head_solver": Categorical(["lbfgs", "loop"]), **TINY_SPACE.params})
    result = _tune(tiny_tree, tmp_path / "tune", tmp_path / "cache", trials=1, space=space, train_best=True)

    first = _stored_trials(tmp_path / "tune")[0]
    assert first.params == {"head_solver": "lbfgs"}  # no loop hyperparameter is sampled for an L-BFGS trial
    best = json.loads(result.best_params_path.read_text(encoding="utf-8"))
    assert "lr" not in best["hyperparameters"]
    assert best["hyperparameters"]["head_solver"] == "lbfgs"
    model = json.loads((tmp_path / "tune" / "model" / "config.json").read_text(encoding="utf-8"))
    assert model["training"]["head_solver_used"] == "lbfgs"
    assert model["metrics"]["final"]["valid_top1"] == pytest.approx(result.best_value)


def test_default_space_searches_the_solver_and_strong_weight_decay() -> None:
    from dogclf.tuning.objective import default_params

    assert DEFAULT_SPACE.params["head_solver"] == Categorical(["lbfgs", "loop"])
    assert DEFAULT_SPACE.params["weight_decay"].high >= 0.1  # type: ignore[union-attr]
    assert DEFAULT_SPACE.params["weight_decay"].log  # type: ignore[union-attr]
    assert default_params(DEFAULT_SPACE) == {"head_solver": "lbfgs"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"head_solver": {"type": "categorical", "choices": ["newton"]}},
            "must be a Categorical of one of lbfgs, loop",
        ),
        ({"optimizer": {"type": "float", "low": 0, "high": 1}}, "must be a Categorical of one of adam, adamw, sgd"),
        ({"label_smoothing": {"type": "float", "low": 0.0, "high": 1.0}}, "label smoothing of the loss"),
    ],
)
def test_space_checks_the_new_hyperparameters(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        SearchSpace.from_dict(spec)
