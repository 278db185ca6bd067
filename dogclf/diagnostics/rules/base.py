"""What every rule shares: :class:`Rule`, :class:`Finding` and :class:`RuleSet`.

:class:`Rule` is a training callback with parameters, :class:`Finding` one firing as its fixed log line, and
:class:`RuleSet` runs rules inside the loop: it prints, records ``rules.json`` and stops training.

A rule is a :class:`~dogclf.training.callbacks.Callback` that looks at what the loop shows it (losses, gradients,
weights, labels, time) and calls :meth:`Rule.fire` when it sees its issue. The :class:`RuleSet` it runs in turns each
firing into one line::

    rule=Overfit status=IssuesFound epoch=4 step=812 detail=valid_loss 0.9120 is 35% above train_loss 0.6750 ...

appends it to ``rules.json`` (written after every firing, so a crashed run keeps what was found), and with
``action="stop"`` sets ``state.stop`` so training ends after the current epoch, the loop's one stop mechanism (early
stopping uses it too). A rule reports at most once per epoch, and a rule that fires again in the next epoch extends
its finding (``last_epoch``) rather than printing the same line every epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dogclf.training.callbacks import Callback, TrainState

if TYPE_CHECKING:
    import torch

__all__ = ["AWS_RULES_URL", "RULES_FILE", "Finding", "Rule", "RuleSet"]

logger = logging.getLogger(__name__)

AWS_RULES_URL = "https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html"
RULES_FILE = "rules.json"
ACTIONS = ("warn", "stop")
_FORMAT = 1
_LINE = re.compile(
    r"^rule=(?P<rule>\S+) status=(?P<status>\S+) epoch=(?P<epoch>\d+) step=(?P<step>\d+) detail=(?P<detail>.*)$"
)


@dataclass
class Finding:
    """One firing of a rule: the start of an episode of epochs in which the rule kept firing.

    Attributes:
        rule: The rule's name (``"Overfit"``).
        epoch: The epoch it fired in (1-based).
        step: Optimizer steps taken when it fired.
        detail: What it saw, with numbers, and the parameter it crossed.
        status: ``"IssuesFound"``, as SageMaker's rule evaluation status.
        seconds: Seconds since training started.
        last_epoch: The last epoch of the episode: a rule that fires again in the next epoch extends its finding
            instead of printing a new line.
    """

    rule: str
    epoch: int
    step: int
    detail: str
    status: str = "IssuesFound"
    seconds: float = 0.0
    last_epoch: int = 0

    def __post_init__(self) -> None:
        self.last_epoch = max(self.last_epoch, self.epoch)

    def line(self) -> str:
        """The fixed, parseable log line (``rule=... status=... epoch=... step=... detail=...``; detail is last)."""
        detail = " ".join(self.detail.split())  # one line, whatever the rule wrote
        return f"rule={self.rule} status={self.status} epoch={self.epoch} step={self.step} detail={detail}"

    @classmethod
    def parse(cls, line: str) -> Finding | None:
        """Reads a :meth:`line` back (e.g. from a job's log); ``None`` when ``line`` is not one."""
        match = _LINE.match(line.strip())
        if match is None:
            return None
        return cls(
            rule=match["rule"],
            status=match["status"],
            epoch=int(match["epoch"]),
            step=int(match["step"]),
            detail=match["detail"],
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "rule": self.rule,
            "status": self.status,
            "epoch": self.epoch,
            "step": self.step,
            "seconds": round(self.seconds, 3),
            "last_epoch": self.last_epoch,
            "detail": self.detail,
            "line": self.line(),
        }


class Rule(Callback):
    """Base class of the rules: a training callback with named parameters that calls :meth:`fire`.

    Subclasses are keyword-only dataclasses whose fields are the rule's parameters, named and defaulted as in
    SageMaker Debugger's built-in rule of the same name (``anchor`` is its section of :data:`AWS_RULES_URL`).

    Class attributes:
        name: The rule's name, as SageMaker spells it.
        anchor: Its section of the AWS documentation page.
        summary: One sentence on what it detects.
        cheap: Whether ``--rules default`` runs it.
    """

    name: ClassVar[str] = ""
    anchor: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    cheap: ClassVar[bool] = True
    _report: Callable[[Rule, TrainState, str, bool], None] | None = None

    @classmethod
    def documentation(cls) -> str:
        """The AWS documentation of the SageMaker rule this one follows."""
        return f"{AWS_RULES_URL}#{cls.anchor}"

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The rule's parameters, in declaration order."""
        return [f.name for f in fields(cls) if not f.name.startswith("_")]  # type: ignore[arg-type]

    def parameters(self) -> dict[str, Any]:
        """The rule's parameter values."""
        return {name: getattr(self, name) for name in self.parameter_names()}

    def fire(self, state: TrainState, detail: str, *, stop: bool = False) -> None:
        """Reports the issue; ``stop`` asks to stop training whatever the rule set's action."""
        if self._report is not None:
            self._report(self, state, detail, stop)

    def stop_requested(self, state: TrainState) -> None:
        """Called after ``state.stop`` was set because of this rule's finding (override to stop sooner)."""

    def close(self) -> None:
        """Releases what the rule holds (hooks, threads); called when training ends or fails."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_positive(rule: str, **values: float | None) -> None:
    """Raises ``ValueError`` naming the rule and parameter when a value is not > 0 (``None`` passes)."""
    for key, value in values.items():
        _check(
            value is None or (isinstance(value, int | float) and value > 0), f"{rule} {key} must be > 0, got {value!r}"
        )


def is_finite(value: float | None) -> bool:
    """Whether ``value`` is a finite number (NaN marks a missing metric, e.g. no validation split)."""
    return value is not None and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _deprecated_callback(log: Callable[[str], None]) -> Callable[[str], None]:
    warnings.warn(
        "RuleSet(log=...) is deprecated: the finding lines go to the 'dogclf' logger of Python's logging module; "
        "drop the log argument.",
        DeprecationWarning,
        stacklevel=3,
    )
    return log


class RuleSet(Callback):
    """Runs rules inside the training loop, prints and records their findings, and stops training when asked.

    Args:
        rules: The rules to run.
        action: ``"warn"`` (report and go on) or ``"stop"`` (also stop training after the epoch of a finding).
        out_dirs: Folders to write ``rules.json`` to (the model directory; ``SM_OUTPUT_DATA_DIR`` in a job).
        log: Deprecated: the finding lines go to the ``dogclf.diagnostics.rules.base`` logger (INFO); a callback
            given here receives them instead, with a DeprecationWarning.
        listeners: Called with each new :class:`Finding` (e.g. the TensorBoard logger).
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        action: str = "warn",
        out_dirs: Iterable[str | os.PathLike[str]] = (),
        log: Callable[[str], None] | None = None,
        listeners: Sequence[Callable[[Finding], None]] = (),
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"Unknown rules action {action!r}; use one of: {', '.join(ACTIONS)}.")
        names = [rule.name for rule in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Each rule may run once; given more than once: {', '.join(duplicates)}.")
        self.rules = list(rules)
        self.action = action
        self.out_dirs = [Path(d) for d in out_dirs]
        self.log = logger.info if log is None else _deprecated_callback(log)
        self.listeners = list(listeners)
        self.findings: list[Finding] = []
        self.stopped_by: Finding | None = None
        self._latest: dict[str, Finding] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._status = "InProgress"
        for rule in self.rules:
            rule._report = self._on_fire

    # The loop's hooks, passed on to every rule.
    def on_train_start(self, state: TrainState) -> None:
        """Starts the clock, writes ``rules.json`` (all rules in progress) and starts the rules.

        A resumed run (``state.epoch > 0``) keeps the findings its ``rules.json`` holds for the finished epochs.
        """
        self._started = time.monotonic()
        self._status = "InProgress"
        self._latest = {}
        self.findings = self._earlier_findings(state.epoch) if state.epoch > 0 else []
        for finding in self.findings:
            self._latest[finding.rule] = finding
        self.write()
        for rule in self.rules:
            rule.on_train_start(state)

    def on_epoch_start(self, state: TrainState) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_epoch_start(state)

    def on_batch_start(self, state: TrainState) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_batch_start(state)

    def on_forward(self, state: TrainState, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_forward(state, logits, labels)

    def on_after_backward(self, state: TrainState, loss: torch.Tensor) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_after_backward(state, loss)

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_batch_end(state, loss, batch_size)

    def on_eval_start(self, state: TrainState) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_eval_start(state)

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_eval_batch_end(state, loss, batch_size)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Passed on to every rule."""
        for rule in self.rules:
            rule.on_epoch_end(state, metrics)

    def on_train_end(self, state: TrainState) -> None:
        """Ends the rules and writes the final ``rules.json``."""
        for rule in self.rules:
            rule.on_train_end(state)
        self.close("Completed")

    def _earlier_findings(self, epochs: int) -> list[Finding]:
        path = next((d / RULES_FILE for d in self.out_dirs if (d / RULES_FILE).is_file()), None)
        if path is None:
            return []
        try:
            saved = json.loads(path.read_text(encoding="utf-8")).get("findings", [])
            earlier = [
                Finding(
                    f["rule"],
                    f["epoch"],
                    f["step"],
                    f["detail"],
                    f.get("status", "IssuesFound"),
                    f.get("seconds", 0.0),
                    min(f.get("last_epoch", f["epoch"]), epochs),
                )
                for f in saved
                if f["epoch"] <= epochs
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []  # not a rules.json this version wrote: start afresh
        return earlier

    def close(self, outcome: str = "Stopped") -> None:
        """Releases the rules' hooks and threads and writes ``rules.json`` with each rule's final status.

        ``outcome`` is ``"Completed"`` after the last epoch; otherwise (training failed or was interrupted) rules
        that found nothing are marked ``"Stopped"`` rather than ``"NoIssuesFound"``. Calling it again is harmless.
        """
        for rule in self.rules:
            rule.close()
        with self._lock:
            if self._status == "InProgress":
                self._status = outcome
                self._write_locked()

    def fired_in(self, name: str, epoch: int) -> bool:
        """Whether rule ``name`` found its issue in ``epoch`` (a new finding or one carried on from before)."""
        return any(f.rule == name and f.epoch <= epoch <= f.last_epoch for f in self.findings)

    def status_of(self, name: str) -> str:
        """A rule's evaluation status: ``InProgress``, ``IssuesFound``, ``NoIssuesFound`` or ``Stopped``."""
        if any(f.rule == name for f in self.findings):
            return "IssuesFound"
        if self._status == "InProgress":
            return "InProgress"
        return "NoIssuesFound" if self._status == "Completed" else "Stopped"

    def _on_fire(self, rule: Rule, state: TrainState, detail: str, stop: bool) -> None:
        with self._lock:
            previous = self._latest.get(rule.name)
            if previous is not None and previous.last_epoch >= state.epoch - 1:
                if previous.last_epoch < state.epoch:  # the issue persists: the same episode, no new line
                    previous.last_epoch = state.epoch
                    self._write_locked()
                return
            finding = Finding(rule.name, state.epoch, state.step, detail, seconds=time.monotonic() - self._started)
            self._latest[rule.name] = finding
            self.findings.append(finding)
            self.log(finding.line())
            stopping = (stop or self.action == "stop") and self.stopped_by is None
            if stopping:
                self.stopped_by = finding
                state.stop = True
                self.log(
                    f"Stopping training after epoch {state.epoch}: rule {rule.name} found an issue "
                    + ("(its stop_training_on_fire is set)" if stop else "(--rules-action stop)")
                )
            self._write_locked()
        for listener in self.listeners:
            listener(finding)
        if stopping:
            rule.stop_requested(state)

    def to_dict(self) -> dict[str, Any]:
        """What ``rules.json`` holds."""
        return _json_safe(
            {
                "format": _FORMAT,
                "action": self.action,
                "status": self._status,
                "stopped_by": self.stopped_by.to_dict() if self.stopped_by else None,
                "rules": [
                    {
                        "name": rule.name,
                        "status": self.status_of(rule.name),
                        "summary": rule.summary,
                        "parameters": rule.parameters(),
                        "documentation": rule.documentation(),
                        "findings": [f.to_dict() for f in self.findings if f.rule == rule.name],
                    }
                    for rule in self.rules
                ],
                "findings": [f.to_dict() for f in self.findings],
            }
        )

    def write(self) -> None:
        """Writes ``rules.json`` to every output folder (atomically)."""
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        for folder in self.out_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{RULES_FILE}.tmp-{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, folder / RULES_FILE)
