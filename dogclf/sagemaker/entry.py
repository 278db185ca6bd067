"""The training container's entry point: ``python train.py --lr 0.001 --batch-size 16 --epochs 5 ...``.

SageMaker's training toolkit runs the source directory's ``train.py`` (:data:`ENTRY_SOURCE`, which calls
:func:`main`) with the job's hyperparameters as ``--name value`` flags. :func:`main` turns them into a ``dogclf train``
command line and runs **the same** ``dogclf train`` (its parser, its errors, its exit codes), with defaults read
from the container's environment:

- ``--data``: a ``training`` channel holding ``train/ valid/ [test/]`` (or one class-per-folder tree, with
  ``--valid-fraction``), or channels ``train``, ``valid`` (alias ``validation``/``val``) and ``test``;
- ``--out``: ``SM_MODEL_DIR``; after training it also gets the ``code/`` folder ``dogclf package`` writes, so the
  job's ``model.tar.gz`` deploys to the PyTorch inference container as it is;
- ``--output-dir``: ``SM_OUTPUT_DATA_DIR`` (history, evaluation report, plots: the job's ``output.tar.gz``);
- ``--checkpoint-dir``: ``/opt/ml/checkpoints/<job name>`` (SageMaker syncs ``/opt/ml/checkpoints`` with the job's
  checkpoint S3 URI); a restarted job (a managed spot interruption) finds its checkpoint there and resumes;
- ``--cache-dir``: a ``features`` channel (backbone features extracted by an earlier run) if there is one, else
  ``/opt/ml/checkpoints/feature-cache`` on the instance's disk, which later jobs sharing the checkpoint prefix reuse;
- a relative ``--tensorboard`` folder (what a tuning job's trials get) goes into the job's checkpoint folder, which
  SageMaker copies to S3 while the job runs.

Flags the job passes override these defaults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dogclf.errors import DatasetError, DogclfError
from dogclf.sagemaker.environment import ContainerEnvironment
from dogclf.sagemaker.hyperparameters import normalize_argv

__all__ = ["ENTRY_SCRIPT", "ENTRY_SOURCE", "FEATURE_CACHE_DIR", "container_train_args", "main", "resolve_data"]

ENTRY_SCRIPT = "train.py"
ENTRY_SOURCE = '''"""SageMaker training entry point written by dogclf: `dogclf train` with the job's hyperparameters."""

import sys

from dogclf.sagemaker.entry import main

if __name__ == "__main__":
    sys.exit(main())
'''

FEATURE_CACHE_DIR = "feature-cache"
FEATURES_CHANNEL = "features"
_VALID_CHANNELS = ("valid", "validation", "val")
_EXIT_ERROR = 2


def _error(message: str) -> int:
    print(f"dogclf (SageMaker entry point): error: {message}", file=sys.stderr, flush=True)
    return _EXIT_ERROR


@contextlib.contextmanager
def resolve_data(env: ContainerEnvironment) -> Iterator[Path]:
    """The data folder ``dogclf train`` reads, from the job's channels.

    A ``training`` channel is used as it is. Separate ``train``/``valid``/``test`` channels are joined under a
    temporary folder of links, removed afterwards.

    Raises:
        DatasetError: No channel with training data, naming the channels the job has.
    """
    channels = env.channels
    if "training" in channels:
        yield channels["training"]
        return
    if "train" not in channels:
        names = ", ".join(sorted(channels)) or "none"
        raise DatasetError(
            f"The job has no training data channel (channels: {names}). Give it a 'training' channel holding "
            "train/ and valid/ (and optionally test/) class folders, or channels 'train', 'valid' and 'test'; "
            "`dogclf sagemaker train --data DIR|s3://...` sets them up."
        )
    folder = Path(tempfile.mkdtemp(prefix="dogclf-channels-"))
    try:
        (folder / "train").symlink_to(channels["train"], target_is_directory=True)
        valid = next((channels[name] for name in _VALID_CHANNELS if name in channels), None)
        if valid is not None:
            (folder / "valid").symlink_to(valid, target_is_directory=True)
        if "test" in channels:
            (folder / "test").symlink_to(channels["test"], target_is_directory=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def container_train_args(argv: Sequence[str], env: ContainerEnvironment, data: Path) -> list[str]:
    """The ``dogclf train`` arguments for this job: the container's defaults, then the job's own flags.

    Raises:
        HyperparameterError: A hyperparameter that cannot become a ``dogclf train`` option.
    """
    from dogclf.pipeline.options import train_parser

    args = normalize_argv(argv, train_parser())
    checkpoint_dir = env.checkpoint_dir / env.job_name if env.job_name else env.checkpoint_dir
    cache_dir = env.channels.get(FEATURES_CHANNEL) or env.checkpoint_dir / FEATURE_CACHE_DIR
    defaults = {
        "--data": data,
        "--out": env.model_dir,
        "--output-dir": env.output_data_dir,
        "--checkpoint-dir": checkpoint_dir,
        "--cache-dir": cache_dir,
    }
    head = [item for flag, value in defaults.items() if not _given(args, flag) for item in (flag, str(value))]
    final = [*head, *args]
    chosen = Path(final[final.index("--checkpoint-dir") + 1]) if "--checkpoint-dir" in final else checkpoint_dir
    if "--tensorboard" in final[:-1]:  # a relative folder (a tuning job's trials): in this job's checkpoint folder
        at = final.index("--tensorboard") + 1
        final[at] = str(chosen / final[at]) if not Path(final[at]).is_absolute() else final[at]
    if (chosen / "checkpoint.pt").is_file() and not _given(final, "--resume"):
        print(
            f"Found the checkpoint {chosen / 'checkpoint.pt'} of an earlier attempt of this job (a restarted job, "
            "e.g. after a managed spot interruption): resuming from it.",
            flush=True,
        )
        final.append("--resume")
    return final


def _make_deployable(model_dir: Path) -> None:
    """Adds the ``code/`` folder ``dogclf package`` writes, so the job's model.tar.gz deploys as it is."""
    from dogclf.artifact import load_config
    from dogclf.backbones.registry import get_backbone
    from dogclf.serving.package import write_serving_code

    config = load_config(model_dir)
    requirements = write_serving_code(model_dir, config, get_backbone(config.backbone).distribution or "")
    print(f"Wrote {model_dir / 'code'} (requirements: {', '.join(requirements)}): model.tar.gz deploys as it is")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Runs ``dogclf train`` for a SageMaker training job; returns its exit code.

    Args:
        argv: The job's hyperparameters as flags (default ``sys.argv[1:]``).
        environ: The container's environment (default ``os.environ``).
    """
    from dogclf.pipeline.train_command import main as train_main

    environ = os.environ if environ is None else environ
    env = ContainerEnvironment.from_environ(environ)
    try:
        with resolve_data(env) as data:
            args = container_train_args(sys.argv[1:] if argv is None else argv, env, data)
            if int(environ.get("RANK", "0") or 0) == 0:
                print("dogclf train " + " ".join(args), flush=True)
            code = train_main(args, environ)
        if code == 0 and int(environ.get("RANK", "0") or 0) == 0:  # under torchrun, rank 0 wrote the model
            _make_deployable(Path(args[args.index("--out") + 1]))
    except DogclfError as exc:
        return _error(str(exc))
    return code
