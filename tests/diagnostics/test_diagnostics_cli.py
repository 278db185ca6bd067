"""``dogclf train`` with the diagnostics options, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dogclf.diagnostics.rules import Finding


def _train(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dogclf", "train", "--backbone", "tinynet", "--weights", "none", "--workers", "0"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_broken_run_prints_parseable_findings_records_them_and_stops(
    plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path
) -> None:
    output = tmp_path / "job-output"
    env = {**plugin_env, "SM_OUTPUT_DATA_DIR": str(output)}
    done = _train(
        env,
        "--data", str(tiny_tree), "--out", str(tmp_path / "model"), "--epochs", "4", "--lr", "10",
        "--rules", "default,WeightUpdateRatio", "--rules-action", "stop", "--rule-param", "Overfit.patience=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    findings = [f for f in map(Finding.parse, done.stdout.splitlines()) if f is not None]
    assert findings[0].rule == "WeightUpdateRatio"
    assert findings[0].epoch == 1
    assert "Stopping training after epoch 1: rule WeightUpdateRatio found an issue (--rules-action stop)" in done.stdout
    assert "epoch=2 " not in done.stdout
    for folder in (tmp_path / "model", output):
        record = json.loads((folder / "rules.json").read_text())
        assert record["stopped_by"]["rule"] == "WeightUpdateRatio"
        overfit = next(r for r in record["rules"] if r["name"] == "Overfit")
        assert overfit["parameters"]["patience"] == 2


def test_bad_rule_options_are_user_errors(plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path) -> None:
    common = ["--data", str(tiny_tree), "--out", str(tmp_path / "model")]
    done = _train(plugin_env, *common, "--rules", "Overfitt")
    assert done.returncode == 2
    assert "dogclf train: error: Unknown rule 'Overfitt'. Use none, default, all, or rule names:" in done.stderr
    done = _train(plugin_env, *common, "--rule-param", "Overfit.patience=soon")
    assert done.returncode == 2
    assert "'soon' is not a valid value for patience (default 1)" in done.stderr
    assert "Traceback" not in done.stderr
