"""dogclf logs through Python ``logging`` (a ``dogclf`` logger hierarchy); the CLI prints what it printed before."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import run_cli

import dogclf

GOLDEN = Path(__file__).parent / "golden" / "cli_output.txt"
TINY = ["--backbone", "tinynet", "--weights", "none", "--workers", "0"]


def _mask(text: str, root: Path) -> list[str]:
    """The lines of ``text`` with the temporary folder, decimals and timings masked (they differ between runs)."""
    text = text.replace(str(root), "<tmp>")
    text = re.sub(r"-[0-9a-f]{20}\b", "-<hash>", text)
    text = re.sub(r"\d+\.\d+(e-?\d+)?", "<f>", text)
    text = re.sub(r"\b\d+ s\b", "<n> s", text)
    text = re.sub(r"\(\d+ img/s\)", "(<n> img/s)", text)
    return text.splitlines()


def _cli_session(root: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``train`` (L-BFGS, again with ``--overwrite``, the epoch loop), ``evaluate`` and ``tune``: what they print."""
    cache = ["--cache-dir", str(root / "cache")]
    model, loop = root / "model", root / "loop"
    commands = [
        ["train", "--data", str(data), "--out", str(model), *TINY, *cache],
        ["train", "--data", str(data), "--out", str(model), *TINY, *cache, "--overwrite"],
        ["train", "--data", str(data), "--out", str(loop), *TINY, *cache, "--head-solver", "loop", "--epochs", "2"],
        ["evaluate", "--model", str(model), "--data", str(data)],
        ["tune", "--data", str(data), "--out", str(root / "tune"), *TINY, *cache, "--trials", "2", "--train-best"],
    ]
    lines: list[str] = []
    for args in commands:
        code, out, err = run_cli(args, capsys)
        lines += [f"$ dogclf {args[0]} (exit {code})", "-- stdout", *out.splitlines(), "-- stderr", *err.splitlines()]
    return _mask("\n".join(lines), root)


def test_cli_prints_what_it_printed_before_logging(
    tiny_spec: dogclf.BackboneSpec, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _cli_session(tmp_path, tiny_tree, capsys)

    if os.environ.get("DOGCLF_WRITE_GOLDEN"):  # how tests/golden/cli_output.txt was recorded (before `logging`)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("\n".join(lines) + "\n")
    assert lines == GOLDEN.read_text().splitlines()
