"""SageMaker Debugger's smdebug hook, driven by the loop: tensors read back with ``smdebug.trials.create_trial``.

smdebug needs protobuf's pure-Python implementation, chosen when protobuf is first imported; this pytest process
has imported it already (TensorBoard, ONNX), so the runs that use smdebug happen in a fresh interpreter, as a
``dogclf train`` would.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dogclf
from dogclf.diagnostics import Diagnostics
from dogclf.diagnostics.errors import MissingExtraError
from dogclf.diagnostics.sagemaker_requests import debug_hook_config
from dogclf.diagnostics.smdebug_compat import import_smdebug
from dogclf.training.config import TrainConfig

# Not importorskip: importing smdebug here would load its protobuf modules into this process.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("smdebug") is None, reason='smdebug is not installed (see the README: "dogclf[debug]")'
)

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    from pathlib import Path

    import dogclf
    from dogclf.diagnostics import Diagnostics
    from dogclf.training.callbacks import Callback
    from dogclf.training.config import TrainConfig

    data, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


    class Record(Callback):
        def __init__(self):
            self.train, self.eval = [], []

        def on_batch_end(self, state, loss, batch_size):
            self.train.append(loss)

        def on_eval_batch_end(self, state, loss, batch_size):
            self.eval.append(loss)


    record = Record()
    environ = {}
    if mode == "local":
        tensors = out / "tensors"
        diagnostics = Diagnostics(smdebug_out=tensors, smdebug_save_interval=1)
    else:  # a SageMaker job's hook configuration, as the platform writes it
        config = json.loads(sys.argv[4])
        tensors = Path(config["LocalPath"])
        (out / "debughookconfig.json").write_text(json.dumps(config))
        environ = {"SMDEBUG_CONFIG_FILE_PATH": str(out / "debughookconfig.json")}
        diagnostics = Diagnostics()
    lines = []


    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())


    logging.getLogger("dogclf").addHandler(Lines())
    logging.getLogger("dogclf").setLevel(logging.INFO)
    config = TrainConfig(epochs=2, batch_size=8, num_workers=0, device="cpu", head_solver="loop")
    dogclf.train(data, "tinynet", out / "model", weights=None, callbacks=[record], progress=False,
                 config=config, environ=environ, diagnostics=diagnostics)

    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(tensors))
    loss = trial.tensor("CrossEntropyLoss_output_0")
    print(json.dumps({
        "names": trial.tensor_names(),
        "train_steps": loss.steps(mode=modes.TRAIN),
        "train": [float(loss.value(s, mode=modes.TRAIN)) for s in loss.steps(mode=modes.TRAIN)],
        "eval": [float(loss.value(s, mode=modes.EVAL)) for s in loss.steps(mode=modes.EVAL)],
        "loop_train": record.train,
        "loop_eval": record.eval,
        "log": lines,
    }))
    """
)


def _run(plugin_env: dict[str, str], data: Path, out: Path, mode: str, *extra: str) -> dict[str, Any]:
    script = out / "smdebug_run.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(data), str(out), mode, *extra],
        env=plugin_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_smdebug_out_saves_the_loops_losses_weights_and_gradients(
    plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path
) -> None:
    result = _run(plugin_env, tiny_tree, tmp_path / "run", "local")
    assert result["train"] == result["loop_train"]  # the values the loop computed, exactly
    assert result["eval"] == result["loop_eval"]
    assert result["train_steps"] == list(range(2 * 3))  # 24 images / batch 8, 2 epochs, saved every step
    names = set(result["names"])
    assert {"Sequential_0.weight", "gradient/Sequential_0.weight", "Sequential_0.bias"} <= names  # the head
    assert any("saving losses, weights, biases and gradients every 1 steps" in line for line in result["log"])


def test_a_sagemaker_jobs_hook_configuration_creates_the_hook(
    plugin_env: dict[str, str], tiny_tree: Path, tmp_path: Path
) -> None:
    config = debug_hook_config("s3://bucket/job/debug-output", save_interval=2, local_path=str(tmp_path / "tensors"))
    result = _run(plugin_env, tiny_tree, tmp_path / "run", "job", json.dumps(config))
    assert result["train_steps"] == [0, 2, 4]  # the job's save_interval
    assert result["train"] == [result["loop_train"][s] for s in (0, 2, 4)]
    assert any("this job has a Debugger hook configuration" in line for line in result["log"])


def test_without_smdebug_a_run_is_unaffected(
    monkeypatch: pytest.MonkeyPatch, tiny_tree: Path, tiny_spec: Any, tmp_path: Path, dogclf_log: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "smdebug", None)  # as if it were not installed
    monkeypatch.delenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", raising=False)
    with pytest.raises(
        MissingExtraError, match=r'smdebug is not installed\. Install it with: pip install "dogclf\[debug\]"'
    ):
        import_smdebug()
    config = tmp_path / "debughookconfig.json"
    config.write_text(json.dumps(debug_hook_config("s3://bucket/debug", local_path=str(tmp_path / "tensors"))))
    dogclf_log.clear()  # from here on
    lines = dogclf_log
    dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "model",
        weights=None,
        config=TrainConfig(epochs=1, num_workers=0, device="cpu", head_solver="loop"),
        progress=False,
        environ={"SMDEBUG_CONFIG_FILE_PATH": str(config)},
    )
    assert any("has a Debugger hook configuration" in line and "no hook can be made" in line for line in lines)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "tensors").exists()
    with pytest.raises(MissingExtraError, match="smdebug is not installed"):
        dogclf.train(
            tiny_tree, "tinynet", tmp_path / "other", weights=None, diagnostics=Diagnostics(smdebug_out=tmp_path / "t")
        )
