"""dogclf logs through Python ``logging`` (a ``dogclf`` logger hierarchy); the CLI prints what it printed before."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from conftest import run_cli

import dogclf

GOLDEN = Path(__file__).parent / "golden" / "cli_output.txt"
TINY = ["--backbone", "tinynet", "--weights", "none", "--workers", "0"]


def _mask(text: str, root: Path) -> list[str]:
    """The lines of ``text`` with what differs between runs and machines masked: folders, decimals, timings."""
    text = text.replace(str(root), "<tmp>")
    text = re.sub(r"-[0-9a-f]{20}\b", "-<hash>", text)
    text = re.sub(r"\d+\.\d+(e-?\d+)?", "<f>", text)
    text = re.sub(r"\b\d+ s\b", "<n> s", text)
    text = re.sub(r"\(\d+ img/s\)", "(<n> img/s)", text)
    text = re.sub(r"final fit \d+ iterations", "final fit <n> iterations", text)  # thread count and CPU dependent
    return text.splitlines()


def _cli_session(root: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``train`` (L-BFGS, again with ``--overwrite``, the epoch loop), ``evaluate`` and ``tune``: what they print.

    Recorded with the code before ``logging`` (``DOGCLF_WRITE_GOLDEN=1``), where each message was a ``log`` call.
    """
    cache = ["--cache-dir", str(root / "cache")]
    model, loop = root / "model", root / "loop"
    commands = [
        ["train", "--data", str(data), "--out", str(model), *TINY, *cache],
        ["train", "--data", str(data), "--out", str(model), *TINY, *cache, "--overwrite", "--penalty-c", "10"],
        ["train", "--data", str(data), "--out", str(loop), *TINY, *cache, "--head-solver", "loop", "--epochs", "2"],
        ["evaluate", "--model", str(model), "--data", str(data)],
        ["tune", "--data", str(data), "--out", str(root / "tune"), *TINY, *cache, "--trials", "2"],
    ]
    lines: list[str] = []
    for args in commands:
        code, out, err = run_cli(args, capsys)
        lines += [f"$ dogclf {args[0]} (exit {code})", "-- stdout", *out.splitlines(), "-- stderr", *err.splitlines()]
    return _mask("\n".join(lines), root)


def test_cli_prints_what_it_printed_before_logging(
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As recorded: fp32 torch (the suite's default pins, set here too for runs with DOGCLF_CPU_BF16=1 or DOGCLF_ENGINE).
    monkeypatch.setenv("DOGCLF_CPU_BF16", "0")
    monkeypatch.setenv("DOGCLF_ENGINE", "torch")
    lines = _cli_session(tmp_path, tiny_tree, capsys)

    if os.environ.get("DOGCLF_WRITE_GOLDEN"):  # how tests/cli/golden/cli_output.txt was recorded (before `logging`)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("\n".join(lines) + "\n")
    assert lines == GOLDEN.read_text().splitlines()


def _tiny_train(data: Path, out: Path, **kwargs: object) -> dogclf.TrainResult:
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu", head_solver="loop")
    return dogclf.train(data, "tinynet", out, config=config, weights=None, progress=False, cache=False, **kwargs)  # type: ignore[arg-type]


def test_library_users_silence_dogclf_the_usual_way_and_see_it_at_info(
    tiny_spec: dogclf.BackboneSpec,
    tiny_tree: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("dogclf").setLevel(logging.WARNING)
    try:
        _tiny_train(tiny_tree, tmp_path / "quiet")
    finally:
        logging.getLogger("dogclf").setLevel(logging.NOTSET)
    quiet = [r for r in caplog.records if r.name.startswith("dogclf")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dogclf"):
        _tiny_train(tiny_tree, tmp_path / "loud")
    loud = {r.name: r.getMessage() for r in caplog.records if r.name.startswith("dogclf")}

    assert quiet == []
    assert "Saved model to" in loud["dogclf.pipeline.run"]  # module loggers: the hierarchy names where it comes from
    assert loud["dogclf.training.callbacks"].startswith("epoch=1 train_loss=")
    assert loud["dogclf.features.pipeline"].startswith("features: 0 cached, 42 extracted")
    assert capsys.readouterr().out == ""  # nothing printed: what is shown is the application's choice


def test_a_log_callback_still_gets_every_message_with_a_deprecation_warning(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path
) -> None:
    lines: list[str] = []

    with pytest.warns(DeprecationWarning, match=r"train\(log=\.\.\.\) is deprecated.*'dogclf' logger"):
        _tiny_train(tiny_tree, tmp_path / "model", log=lines.append)

    assert lines[0].startswith("Reading ")
    assert any(line.startswith("epoch=1 ") for line in lines)
    assert lines[-1] == f"Saved model to {tmp_path / 'model'}"
    assert logging.getLogger("dogclf").level == logging.NOTSET  # the callback's handler and level are gone
    assert [type(h) for h in logging.getLogger("dogclf").handlers] == [logging.NullHandler]


def test_main_leaves_logging_as_it_found_it_keeps_warnings_off_stdout_and_quiets_with_q(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dogclf._logging import cli_logging

    logger = logging.getLogger("dogclf")
    before = (list(logger.handlers), logger.level)
    with cli_logging():
        logging.getLogger("dogclf.features.cache").warning("feature cache /x cannot be written (read-only)")
        logging.getLogger("dogclf.pipeline.run").info("Saved model to /y")
        logging.getLogger("dogclf.serve").info("stopped: 1 requests")  # `dogclf serve` logs through the root logger
    out, err = capsys.readouterr()
    quiet = run_cli(["-q", "train", "--data", str(tiny_tree), "--out", str(tmp_path / "m"), *TINY], capsys)

    assert (out, err) == ("Saved model to /y\n", "warning: feature cache /x cannot be written (read-only)\n")
    assert quiet == (0, "", "")  # -q: warnings only
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (list(logger.handlers), logger.level) == before
