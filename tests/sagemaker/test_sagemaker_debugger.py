"""``--debugger`` only where the hook can feed the rules: refused for images without smdebug, and no hook for a
distributed job with checkpoints (every dogclf job has them), as AWS documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from dogclf.sagemaker.debugger import DebuggerUnsupportedError, debugger_fields, image_has_smdebug

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
OFFLINE = {"AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def _dry_run(tiny_tree: Path, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, str, str]:
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--backbone", "resnet18", "--role", ROLE]
    return run_cli([*args, "--bucket", "b", "--job-name", "dbg", "--dry-run", *more], capsys, OFFLINE)


@pytest.mark.parametrize("version", ["", "2.9.0"])
def test_debugger_is_refused_for_images_without_smdebug(
    version: str, tiny_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = ["--framework-version", version] if version else []
    code, out, err = _dry_run(tiny_tree, capsys, "--debugger", *chosen)
    assert code == 2
    assert out == ""  # no request printed, nothing sent
    assert f"the PyTorch {version or '2.8.0'} training image has none" in err
    assert "Drop --debugger: dogclf's own rules" in err
    assert "Traceback" not in err
    code, out, err = _dry_run(tiny_tree, capsys, "--tensorboard", *chosen)  # what still works
    assert code == 0, err
    assert "DebugHookConfig" not in json.loads(out)


def test_which_images_have_smdebug() -> None:
    assert [image_has_smdebug(v) for v in ("1.13.1", "2.0.0", "2.1.0", "2.2.0", "2.8.0", "2.10.0")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(DebuggerUnsupportedError, match="Cannot read the framework version 'latest'"):
        image_has_smdebug("latest")


def test_a_distributed_job_gets_no_hook_and_no_tensor_rules(
    tiny_tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dogclf_log: list[str]
) -> None:
    monkeypatch.setattr("dogclf.sagemaker.debugger.SMDEBUG_IMAGES_UP_TO", (2, 8))  # played: an image with smdebug
    code, out, err = _dry_run(tiny_tree, capsys, "--debugger")
    assert code == 0, err
    single = json.loads(out)
    assert {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig"} <= set(single)

    code, out, err = _dry_run(tiny_tree, capsys, "--debugger", "--instance-count", "2")
    assert code == 0, err
    distributed = json.loads(out[out.index("{") :])
    assert distributed["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert distributed["CheckpointConfig"]["S3Uri"].endswith("/jobs/dbg/checkpoints")
    assert "DebugHookConfig" not in distributed
    assert "DebugRuleConfigurations" not in distributed
    assert distributed["ProfilerConfig"] == single["ProfilerConfig"]
    assert "AWS: Debugger is not available for distributed training with checkpoints" in out

    dogclf_log.clear()  # from here on

    lines = dogclf_log
    fields = debugger_fields("us-east-1", "s3://b/p", framework_version="2.8.0", distributed=False)
    assert fields["DebugHookConfig"]["S3OutputPath"] == "s3://b/p/debug-output"
    assert lines == []
