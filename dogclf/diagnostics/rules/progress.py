"""``StalledTrainingRule``: a watchdog thread that fires when the loop makes no progress for too long."""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from dogclf.diagnostics.rules.base import Rule, check_positive
from dogclf.training.callbacks import TrainState

__all__ = ["StalledTrainingRule"]


@dataclass(kw_only=True)
class StalledTrainingRule(Rule):
    """Detects a training run that makes no progress for ``threshold`` seconds.

    No training or validation batch finishing for that long means a hung data loader, a deadlock, a stuck file system.

    A daemon thread watches the time of the last finished batch. A stalled loop cannot stop itself at an epoch's
    end, so when the rule asks to stop (``stop_training_on_fire``, or ``--rules-action stop``) and training runs in
    the main thread, the watchdog interrupts it as Ctrl-C would: the finished epochs are in the checkpoint, and
    ``--resume`` continues. (SageMaker's rule stops the job through its name prefix; here the process is the job.)

    Attributes:
        threshold: Seconds without progress before the rule fires (default 1800).
        stop_training_on_fire: Stop training when it fires, whatever ``--rules-action`` says (default False).
    """

    name = "StalledTrainingRule"
    anchor = "stalled-training"
    summary = "training made no progress for a long time"

    threshold: float = 1800.0
    stop_training_on_fire: bool = False
    _last: float = field(default=0.0, init=False, repr=False)
    _where: str = field(default="", init=False, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _owner: threading.Thread | None = field(default=None, init=False, repr=False)
    _fired_at: float = field(default=-1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive(self.name, threshold=self.threshold)

    def on_train_start(self, state: TrainState) -> None:
        """Starts the watchdog."""
        self.close()
        self._owner = threading.current_thread()
        self._progress(state)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(state,), name="dogclf-stall-watchdog", daemon=True)
        self._thread.start()

    def _progress(self, state: TrainState) -> None:
        self._last = time.monotonic()
        self._where = f"epoch {state.epoch} step {state.step} ({state.phase})"

    def on_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Progress."""
        self._progress(state)

    def on_eval_batch_end(self, state: TrainState, loss: float, batch_size: int) -> None:
        """Progress."""
        self._progress(state)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Progress."""
        self._progress(state)

    def on_train_end(self, state: TrainState) -> None:
        """Stops the watchdog."""
        self.close()

    def _watch(self, state: TrainState) -> None:
        poll = min(5.0, self.threshold / 4)
        while not self._done.wait(poll):
            last = self._last
            idle = time.monotonic() - last
            if idle > self.threshold and last != self._fired_at:
                self._fired_at = last
                self.fire(
                    state,
                    f"no training progress for {idle:.0f} s (threshold {self.threshold:g} s) since {self._where}; "
                    "a hung data loader (try --workers 0), a stuck file system or a deadlock",
                    stop=self.stop_training_on_fire,
                )

    def stop_requested(self, state: TrainState) -> None:
        """Interrupts the training thread when it is the main thread (a stalled loop never reaches its check)."""
        if threading.current_thread() is self._thread and self._owner is threading.main_thread():
            if hasattr(signal, "pthread_kill"):  # a real signal also ends a blocking call (a hung loader's wait)
                signal.pthread_kill(self._owner.ident or 0, signal.SIGINT)
            else:
                _thread.interrupt_main()

    def close(self) -> None:
        """Stops the watchdog thread."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None
