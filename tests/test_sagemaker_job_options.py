"""What ``dogclf sagemaker train|tune`` sends reaches ``dogclf train`` inside the job as the user meant it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dogclf.cli import main, train_parser
from dogclf.sagemaker.entry import container_train_args
from dogclf.sagemaker.environment import ContainerEnvironment

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
_DRY = {"AWS_REGION": "eu-west-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
# Options the container sets itself (the launcher hides them); the rest of dogclf train's switches reach the job.
_CONTAINER_SET = {"help", "progress", "resume", "overwrite"}


def _switches() -> list[str]:
    """Every form of every boolean option of ``dogclf train`` a user can type: --x, and --no-x where it exists."""
    forms = []
    for action in train_parser()._actions:
        if action.nargs == 0 and action.dest not in _CONTAINER_SET:
            forms += [o for o in action.option_strings if o.startswith("--")]
    return forms


def _job_argv(hyperparameters: dict[str, str]) -> list[str]:
    """The entry script's arguments, as the SageMaker training toolkit makes them from the job's hyperparameters."""
    mapping = pytest.importorskip("sagemaker_training.mapping", reason="the training toolkit is not installed")
    decoded = {}
    for key, value in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        try:
            decoded[key] = json.loads(value)  # what sagemaker_training.environment.read_hyperparameters does
        except ValueError:
            decoded[key] = value
    return [str(a) for a in mapping.to_cmd_args(decoded)]


def test_the_switch_forms_cover_every_boolean_option() -> None:
    assert {"--freeze", "--no-freeze", "--cache", "--no-cache", "--novelty", "--no-novelty"} <= set(_switches())
    assert {"--augment", "--strict", "--profile"} <= set(_switches())


@pytest.mark.parametrize("switch", _switches())
def test_every_boolean_option_reaches_dogclf_train_in_the_job_as_given(
    switch: str, tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run", switch]
    assert main(args, environ=_DRY) == 0, capsys.readouterr().err
    request = json.loads(capsys.readouterr().out)

    argv = _job_argv(request["HyperParameters"])
    env = ContainerEnvironment.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    in_job = train_parser().parse_args(container_train_args(argv, env, tiny_tree))
    local = train_parser().parse_args(["--data", str(tiny_tree), "--out", str(tmp_path), switch])
    dest = next(a.dest for a in train_parser()._actions if switch in a.option_strings)
    assert getattr(in_job, dest) == getattr(local, dest), (switch, argv)
    assert not any(a.startswith("--no-no-") for a in argv)


def test_a_default_switch_is_not_sent(tiny_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sagemaker", "train", "--data", str(tiny_tree), "--role", ROLE, "--bucket", "b", "--dry-run"]
    assert main(args, environ=_DRY) == 0
    sent = json.loads(capsys.readouterr().out)["HyperParameters"]
    assert not {"freeze", "cache", "novelty", "no-freeze", "augment"} & set(sent)
