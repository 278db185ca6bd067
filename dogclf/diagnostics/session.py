"""What a ``train()`` call watches and records (:class:`Diagnostics`), and the session that does it for one call.

``train(..., diagnostics=Diagnostics(...))`` opens a :class:`DiagnosticsSession` before its first step. The session

* times the steps (``@phase`` in ``dogclf.pipeline.run``), and ends itself if a step raises;
* gives the loop its callbacks: the rules (on by default), smdebug, TensorBoard, the profiler's step timing;
* writes ``rules.json`` to the model directory and, in a SageMaker job, to ``SM_OUTPUT_DATA_DIR`` too;
* after the model is saved, writes the profile report (``<model>/profile/``, or ``$SM_OUTPUT_DATA_DIR/profile/``
  in a job, so it lands in the job's ``output.tar.gz`` rather than the model archive).

In a SageMaker job the environment also switches things on: a Debugger hook configuration (the job's
``DebugHookConfig``) creates the smdebug hook, and a TensorBoard output configuration sets the TensorBoard folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogclf.diagnostics.phases import PhaseTimer
from dogclf.diagnostics.rules import Rule, RuleSet, make_rules
from dogclf.training.callbacks import Callback

__all__ = ["Diagnostics", "DiagnosticsSession", "open_session", "output_data_dir"]

logger = logging.getLogger(__name__)


def output_data_dir(environ: Mapping[str, str]) -> Path | None:
    """``SM_OUTPUT_DATA_DIR`` (a SageMaker job's extra-output folder, uploaded as ``output.tar.gz``), if set."""
    value = environ.get("SM_OUTPUT_DATA_DIR")
    return Path(value) if value else None


@dataclass(frozen=True, kw_only=True)
class Diagnostics:
    """What a training run watches and records.

    Attributes:
        rules: ``"default"`` (the cheap rules), ``"all"``, ``"none"``, rule names or a comma list of those, or
            :class:`~dogclf.diagnostics.rules.Rule` instances.
        rule_params: Per-rule parameter overrides, e.g. ``{"Overfit": {"ratio_threshold": 0.2}}``.
        rules_action: ``"warn"`` (report) or ``"stop"`` (also stop training after the epoch of a finding).
        profile: Write the profile report (``profile/report.html``).
        profile_steps: Training steps the torch.profiler window records.
        sample_interval: Seconds between system samples while profiling.
        profiler_rule_params: Threshold overrides for the profiler's findings, by rule name.
        tensorboard: TensorBoard log folder; ``None`` for none (in a SageMaker job given a TensorBoard output
            configuration, its folder).
        smdebug_out: Folder for smdebug tensors; ``None`` for none (in a SageMaker job given a Debugger hook
            configuration, the hook follows it).
        smdebug_save_interval: With ``smdebug_out``, save tensors every this many steps.
    """

    rules: str | Sequence[str | Rule] = "default"
    rule_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rules_action: str = "warn"
    profile: bool = False
    profile_steps: int = 5
    sample_interval: float = 0.5
    profiler_rule_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tensorboard: str | os.PathLike[str] | None = None
    smdebug_out: str | os.PathLike[str] | None = None
    smdebug_save_interval: int = 10


class DiagnosticsSession:
    """The diagnostics of one ``train()`` call; see the module docstring. Made by :func:`open_session`."""

    def __init__(
        self,
        diagnostics: Diagnostics,
        out_dir: Path,
        *,
        environ: Mapping[str, str],
    ) -> None:
        self.diagnostics = diagnostics
        self.out_dir = out_dir
        self.timer = PhaseTimer(on_error=self.abort)
        job_dir = output_data_dir(environ)
        self.rule_dirs = [out_dir, *([job_dir] if job_dir else [])]
        self.report_dir = (job_dir or out_dir) / "profile"
        self.smdebug = _smdebug_hook(diagnostics, environ)
        self.tensorboard = _tensorboard(diagnostics, environ)
        rules = make_rules(diagnostics.rules, diagnostics.rule_params)
        listeners = [self.tensorboard.add_finding] if self.tensorboard is not None else []
        self.rules = (
            RuleSet(rules, action=diagnostics.rules_action, out_dirs=self.rule_dirs, listeners=listeners)
            if rules
            else None
        )
        if self.tensorboard is not None:
            self.tensorboard.rules = self.rules
        self.profiler = None
        if diagnostics.profile:
            from dogclf.diagnostics.profiler import Profiler

            self.profiler = Profiler(
                self.report_dir,
                steps=diagnostics.profile_steps,
                sample_interval=diagnostics.sample_interval,
                rule_params=diagnostics.profiler_rule_params,
            )
        self._closed = False

    def start(self) -> DiagnosticsSession:
        """Starts the phase timer and, when profiling, the system sampler."""
        self.timer.start()
        if self.profiler is not None:
            self.profiler.start(self.timer.started)
        return self

    def callbacks(self, class_names: Sequence[str] = ()) -> list[Callback]:
        """The loop callbacks: smdebug, the rules, TensorBoard, between the profiler's step timer halves.

        smdebug comes before TensorBoard: it must import protobuf first. ``class_names`` label the
        ClassImbalance rule's details.
        """
        hooks: list[Callback] = list(self.profiler.first_callbacks) if self.profiler is not None else []
        if self.smdebug is not None:
            hooks.append(self.smdebug)
        if self.rules is not None:
            for rule in self.rules.rules:
                if rule.name == "ClassImbalance" and not getattr(rule, "class_names", ()):
                    rule.class_names = list(class_names)  # type: ignore[attr-defined]
            hooks.append(self.rules)
        if self.tensorboard is not None:  # after the rules: it logs the epoch's findings
            hooks.append(self.tensorboard)
        if self.profiler is not None:
            hooks += self.profiler.last_callbacks
        return hooks

    def close(self) -> Path | None:
        """After the model is saved: ends everything and writes the profile report; returns its path, if any."""
        if self._closed:
            return None
        self._closed = True
        self._release("Completed")
        report = None
        if self.profiler is not None:
            report = self.profiler.finish(self.timer, info=self._run_info(), rule_findings=self._findings())
            logger.info(f"Profile report: {report} (trace and profile.json beside it)")
        self.timer.stop()
        return report

    def abort(self, exc: BaseException) -> None:
        """Ends the session when a step raised (or Ctrl-C).

        Stops threads, closes writers, records the rules' state, and writes the profile of the run so far. Calling
        it again (as the exception passes outer steps) does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._release("Stopped")
        if self.profiler is not None:
            try:
                report = self.profiler.finish(self.timer, info=self._run_info(), rule_findings=self._findings())
                logger.info(f"Profile report of the interrupted run: {report}")
            except Exception as error:  # the run's own exception is the one to see
                logger.info(f"(no profile report: {type(error).__name__}: {error})")
        self.timer.stop()

    def _release(self, outcome: str) -> None:
        if self.rules is not None:
            self.rules.close(outcome)
        for writer in (self.smdebug, self.tensorboard):
            if writer is not None:
                writer.close()
        if self.profiler is not None:
            self.profiler.stop()

    def _findings(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.rules.findings] if self.rules is not None else []

    def _run_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"model directory": str(self.out_dir)}
        config_file = self.out_dir / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            training = config.get("training", {})
            info.update(
                {
                    "backbone": config.get("backbone"),
                    "classes": len(config.get("class_names", [])),
                    "features": training.get("features"),
                    "epochs": training.get("epochs"),
                    "batch_size": training.get("batch_size"),
                    "workers": training.get("num_workers"),
                    "train images": training.get("n_train"),
                    "valid images": training.get("n_valid"),
                }
            )
        return {k: v for k, v in info.items() if v is not None}


def open_session(
    diagnostics: Diagnostics | None,
    out_dir: str | os.PathLike[str],
    *,
    environ: Mapping[str, str],
) -> DiagnosticsSession:
    """Opens and starts the diagnostics of a ``train()`` call (default :class:`Diagnostics`: the cheap rules).

    In a ``torchrun`` group only rank 0 (``RANK`` in ``environ``) watches and records: the other ranks train the same
    model and would write the same files.
    """
    if environ.get("RANK", "0") not in ("", "0"):
        diagnostics, environ = Diagnostics(rules="none"), {}
    return DiagnosticsSession(diagnostics or Diagnostics(), Path(out_dir), environ=environ).start()


def _smdebug_hook(diagnostics: Diagnostics, environ: Mapping[str, str]) -> Any:
    from dogclf.diagnostics.smdebug_hook import job_hook_config

    if diagnostics.smdebug_out is not None:
        from dogclf.diagnostics.smdebug_hook import SmdebugHook

        hook = SmdebugHook(out_dir=diagnostics.smdebug_out, save_interval=diagnostics.smdebug_save_interval)
        logger.info(
            f"smdebug: saving losses, weights, biases and gradients every {hook.save_interval} steps to {hook.where}"
        )
        return hook
    config = job_hook_config(environ)
    if config is None:
        return None
    from dogclf.diagnostics.errors import MissingExtraError
    from dogclf.diagnostics.smdebug_hook import SmdebugHook

    try:
        hook = SmdebugHook(json_config=config)
    except MissingExtraError as exc:  # the job still trains; its Debugger rules will see no tensors
        logger.info(f"smdebug: this job has a Debugger hook configuration ({config}) but no hook can be made: {exc}")
        return None
    logger.info(f"smdebug: this job has a Debugger hook configuration; saving tensors as {config} says")
    return hook


def _tensorboard(diagnostics: Diagnostics, environ: Mapping[str, str]) -> Any:
    from dogclf.diagnostics.tensorboard import TensorBoardLogger, job_tensorboard_dir

    folder = diagnostics.tensorboard if diagnostics.tensorboard is not None else job_tensorboard_dir(environ)
    return TensorBoardLogger(folder) if folder is not None else None
