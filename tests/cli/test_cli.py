"""The ``dogclf`` command line, end to end in subprocesses, with the tiny backbone installed as a real plugin."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import dogclf_command, plugin_environ
from PIL import Image

import dogclf
from dogclf.cli import main

EPOCH_LINE = re.compile(r"^epoch=(\d+) train_loss=([0-9.]+) valid_loss=([0-9.]+) valid_top1=([0-9.]+)", re.M)
# The epoch loop (--head-solver loop): these tests read its per-epoch lines and checkpoints.
TINY = ["--backbone", "tinynet", "--weights", "none", "--workers", "0", "--batch-size", "8", "--head-solver", "loop"]


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dogclf_command(), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _epochs(stdout: str) -> list[int]:
    return [int(m.group(1)) for m in EPOCH_LINE.finditer(stdout)]


@pytest.fixture(scope="module")
def cli_run(tiny_plugin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``dogclf train`` run (2 epochs, stdout and stderr are pipes, not a TTY) shared by this module's tests."""
    root = tmp_path_factory.mktemp("cli")
    data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=(8, 3, 3), size=40, seed=1)
    env = plugin_environ(tiny_plugin_dir)
    model = root / "model"
    done = _run(["train", "--data", str(data), "--out", str(model), "--epochs", "2", *TINY], env)
    return {"env": env, "data": data, "model": model, "train": done}


def test_train_prints_one_epoch_line_per_epoch_and_no_progress_bars(cli_run: dict[str, Any]) -> None:
    done = cli_run["train"]

    assert done.returncode == 0, done.stderr
    assert _epochs(done.stdout) == [1, 2]
    assert "\r" not in done.stdout + done.stderr  # not a TTY: no progress bars
    assert "3 classes, 24 train, 9 valid (valid/), 9 test images" in done.stdout
    assert "Training tinynet (frozen backbone" in done.stdout
    assert re.search(r"^test_top1=[0-9.]+ test_top5=1\.0000 n=9$", done.stdout, re.M)
    assert f"Saved model to {cli_run['model']}" in done.stdout
    assert (cli_run["model"] / "model.safetensors").is_file()
    assert (cli_run["model"] / "config.json").is_file()


def test_evaluate_json_reports_metrics_and_writes_the_confusion_and_reliability_pngs(
    cli_run: dict[str, Any], tmp_path: Path
) -> None:
    plot = tmp_path / "plots" / "cm.png"
    reliability = tmp_path / "plots" / "rel.png"

    done = _run(
        [
            *("evaluate", "--model", str(cli_run["model"]), "--data", str(cli_run["data"]), "--json"),
            *("--plot", str(plot), "--reliability-plot", str(reliability)),
        ],
        cli_run["env"],
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"top1", "top5", "n", "per_class"} <= set(report)
    assert report["n"] == 9
    assert report["split"] == "test"
    assert 0.0 <= report["top1"] <= report["top5"] == 1.0
    assert set(report["per_class"]) == {"Synthetic red discs", "Synthetic blue stripes", "Synthetic green squares"}
    assert all(stats["n"] == 3 for stats in report["per_class"].values())
    assert report["confusion_png"] == str(plot)
    assert report["reliability_png"] == str(reliability)
    for png in (plot, reliability):
        with Image.open(png) as image:
            assert image.format == "PNG"
            image.verify()
    bins = report["reliability"]  # the table the diagram draws: every image in one bin, the ECE its weighted gap
    assert sum(b["n"] for b in bins) == 9
    gap = sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / 9
    assert gap == pytest.approx(report["ece"])


# The text outputs run main() in-process (tinynet registered by tiny_spec), sparing two interpreter start-ups.
def test_evaluate_text_output_is_readable(
    cli_run: dict[str, Any], tiny_spec: dogclf.BackboneSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--model", str(cli_run["model"]), "--data", str(cli_run["data"]), "--split", "valid"])

    stdout = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^valid: n=9 top1=[0-9.]+ top5=1\.0000 loss=[0-9.]+$", stdout, re.M)
    assert "Per-class accuracy (worst first):" in stdout
    assert len(re.findall(r"^ +[0-9.]+%  n=3 +Synthetic ", stdout, re.M)) == 3
    png = cli_run["model"] / "confusion_valid.png"
    assert f"Confusion matrix: {png}" in stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    diagram = cli_run["model"] / "reliability_valid.png"
    assert f"Reliability diagram: {diagram}" in stdout
    assert diagram.read_bytes().startswith(b"\x89PNG")


def test_predict_json_gives_top_k_labels_and_reports_unreadable_images(cli_run: dict[str, Any], tmp_path: Path) -> None:
    photo = next((cli_run["data"] / "test" / "001.Synthetic_red_discs").iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")

    done = _run(
        ["predict", "--model", str(cli_run["model"]), str(photo), str(broken), "--json", "--top-k", "2"],
        cli_run["env"],
    )

    assert done.returncode == 1, done.stderr  # some inputs failed
    good, bad = json.loads(done.stdout)
    assert good["image"] == str(photo)
    predictions = good["predictions"]
    assert len(predictions) == 2
    assert all(set(p) == {"label", "score", "index"} for p in predictions)
    assert predictions[0]["score"] >= predictions[1]["score"] > 0
    names = {"Synthetic red discs", "Synthetic blue stripes", "Synthetic green squares"}
    assert {p["label"] for p in predictions} <= names
    assert bad["image"] == str(broken)
    assert "not an image Pillow can identify" in bad["error"]


def test_predict_text_output_is_readable(
    cli_run: dict[str, Any], tiny_spec: dogclf.BackboneSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = next((cli_run["data"] / "valid" / "003.Synthetic_green_squares").iterdir())

    code = main(["predict", "--model", str(cli_run["model"]), str(photo), "--top-k", "3"])

    stdout = capsys.readouterr().out
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == str(photo)
    scores = [re.fullmatch(r" +([0-9.]+)%  (Synthetic [a-z ]+)", line) for line in lines[1:]]
    assert len(scores) == 3
    assert all(scores), stdout
    values = [float(m.group(1)) for m in scores if m]
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(100.0, abs=0.2)


def test_backbones_json_lists_plugins_with_their_distribution_and_the_built_ins(plugin_env: dict[str, str]) -> None:
    done = _run(["backbones", "--json"], plugin_env)

    assert done.returncode == 0, done.stderr
    listing = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert listing["tinynet"]["distribution"] == "dogclf-tinybb 0.1"
    assert listing["tinynet"]["input_size"] == 32
    assert listing["tinynet"]["num_features"] == 16
    for name in ("resnet18", "resnet50", "inception_v3"):
        assert listing[name]["distribution"] == "dogclf (built-in)"


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (
            ["train", "--data", "{data}", "--out", "{tmp}/m", "--backbone", "no_such_net", "--weights", "none"],
            ["dogclf train: error: Unknown backbone 'no_such_net'", "Known backbones:", "resnet18", "tinynet"],
        ),
        (
            ["train", "--data", "{tmp}/missing", "--out", "{tmp}/m", *TINY],
            ["dogclf train: error: Data folder '{tmp}/missing' does not exist."],
        ),
        (
            ["evaluate", "--model", "{data}", "--data", "{data}"],
            [
                "dogclf evaluate: error: '{data}' is not a dogclf model directory:",
                "missing config.json, model.safetensors",
            ],
        ),
    ],
    ids=["unknown-backbone", "missing-data", "bad-model-dir"],
)
def test_errors_exit_2_with_a_useful_message(
    args: list[str], messages: list[str], plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path
) -> None:
    def fill(text: str) -> str:
        return text.replace("{data}", str(tiny_tree)).replace("{tmp}", str(tmp_path))

    done = _run([fill(a) for a in args], plugin_env)

    assert done.returncode == 2
    for message in messages:
        assert fill(message) in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no stack trace


# In-process: the same main() the subprocesses run, for cases that need no plugin and no training.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--data", "{data}", "--out", "{tmp}", "--valid-fraction", "0.2", "--weights", "none"],
            r"dogclf train: error: .* has a valid/ folder and a valid fraction \(0\.2\)",
        ),
        (
            ["train", "--data", "{data}", "--out", "{tmp}", "--epochs", "0"],
            r"dogclf train: error: epochs must be an int >= 1, got 0",
        ),
        (["predict", "--model", "{tmp}", "x.jpg", "--top-k", "0"], r"dogclf predict: error: --top-k must be >= 1"),
        (["evaluate", "--model", "{tmp}/nope", "--data", "{data}"], r"Model directory .*nope' does not exist"),
    ],
    ids=["valid-and-fraction", "zero-epochs", "bad-top-k", "no-model-dir"],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([a.replace("{data}", str(tiny_tree)).replace("{tmp}", str(tmp_path)) for a in args])

    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_existing_model_dir_error_suggests_resume_and_overwrite(
    cli_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(cli_run["data"]), "--out", str(cli_run["model"]), "--backbone", "resnet18"])

    assert code == 2
    err = capsys.readouterr().err
    assert "dogclf train: error: Output folder" in err
    assert "--resume" in err
    assert "--overwrite" in err


def test_missing_required_argument_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", "somewhere"])

    assert info.value.code == 2
    assert "dogclf train: error: the following arguments are required: --data" in capsys.readouterr().err


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"dogclf exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_saves_the_run_and_resume_continues_it(
    plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    args = ["train", "--data", str(tiny_tree), "--out", str(out), *TINY]
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    # A child inherits an ignored SIGINT (pytest started in the background); a handler is reset to the default on exec.
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
            proc = subprocess.Popen(
                [*dogclf_command(), *args, "--epochs", "200"], env=plugin_env, stdout=out_file, stderr=err_file
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        _wait_for(lambda: (out / "checkpoint.pt").is_file(), proc, 90, "the first checkpoint")
        _wait_for(lambda: _epochs(stdout.read_text()), proc, 10, "the first epoch line")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert code == 130, stderr.read_text()
    printed = _epochs(stdout.read_text())
    assert printed == list(range(1, len(printed) + 1))
    last = printed[-1]
    assert last < 200
    message = stderr.read_text()
    assert "Interrupted. Finished epochs are saved in" in message
    assert f"dogclf {shlex.join(args)} --epochs 200 --resume" in message
    assert not (out / "model.safetensors").exists()

    # The signal may land after an epoch's checkpoint is written and before its line is printed.
    saved = int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"])
    assert saved in (last, last + 1)

    resumed = _run([*args, "--resume", "--epochs", str(saved + 2)], plugin_env)

    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {saved} of {saved + 2}" in resumed.stdout
    assert _epochs(resumed.stdout) == [saved + 1, saved + 2]
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert [int(h["epoch"]) for h in config["metrics"]["history"]] == list(range(1, saved + 3))


@pytest.mark.slow
def test_demo_runs_offline_on_synthetic_data_and_predicts(tmp_path: Path) -> None:
    started = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    done = _run(["demo", "--workdir", str(tmp_path / "demo")], env, timeout=120)

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 120
    assert "SYNTHETIC" in done.stdout
    assert _epochs(done.stdout) == [1, 2, 3, 4]
    match = re.search(r"^5/5 Reloaded it and predicted (\S+) \(true: ([^)]+)\): (.+)$", done.stdout, re.M)
    assert match, done.stdout
    ranked = re.findall(r"(Synthetic [a-z ]+?) ([01]\.\d\d)", match.group(3))
    assert len(ranked) == 3
    assert (tmp_path / "demo" / "model" / "model.safetensors").is_file()


def test_evaluate_rebuilds_the_held_out_split_of_a_valid_fraction_run(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    # A plain class-per-folder tree (no valid/): training holds out 25% per class; evaluate must score that same part.
    tree = dogclf.make_synthetic_dataset(tmp_path / "synthetic", num_classes=3, per_split=(8, 0, 0), size=40)
    data = tree / "train"
    out = tmp_path / "model"
    config = dogclf.TrainConfig(epochs=2, batch_size=8, num_workers=0, seed=5)
    result = dogclf.train(data, "tinynet", out, config=config, weights=None, valid_fraction=0.25, progress=False)
    capsys.readouterr()

    code = main(["evaluate", "--model", str(out), "--data", str(data), "--split", "valid", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert json.loads((out / "config.json").read_text())["training"]["valid_fraction"] == 0.25
    assert report["n"] == len(result.splits.valid) == 6
    assert report["top1"] == pytest.approx(result.history[-1]["valid_top1"])
