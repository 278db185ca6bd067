"""System use over a whole run, sampled by a thread: CPU per core, I/O wait, memory, and GPU use where there is one.

CPU and memory come from psutil (the ``dogclf[profile]`` extra). GPUs are sampled only once this process has
initialised CUDA (so a CPU run on a GPU machine does not create CUDA contexts): memory from
``torch.cuda.mem_get_info`` and utilisation from ``torch.cuda.utilization`` where NVML (``nvidia-ml-py``) is
installed. SageMaker's system monitor samples every 500 ms by default; so does this.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dogclf.diagnostics.errors import MissingExtraError

__all__ = ["Sample", "SystemSampler"]

_MAX_SAMPLES = 20_000  # about 2.8 hours at 500 ms; beyond that every other sample is dropped


@dataclass
class Sample:
    """One sample.

    Attributes:
        t: Seconds since the sampler started.
        cpu: Utilisation of each core, percent.
        iowait: Share of CPU time waiting for I/O, percent (0 where the OS does not report it).
        memory: System memory in use, percent.
        rss_gb: This process's resident memory, GiB.
        gpu: Utilisation of each GPU, percent (empty without CUDA or NVML).
        gpu_memory: Memory in use on each GPU, percent (empty without CUDA).
        process_cpu: This process's CPU use, percent of all cores (the rest of ``cpu`` is other processes').
    """

    t: float
    cpu: list[float]
    iowait: float
    memory: float
    rss_gb: float
    gpu: list[float] = field(default_factory=list)
    gpu_memory: list[float] = field(default_factory=list)
    process_cpu: float = 0.0

    @property
    def cpu_total(self) -> float:
        """Mean utilisation over the cores, percent."""
        return sum(self.cpu) / len(self.cpu) if self.cpu else 0.0


def _psutil() -> Any:
    try:
        import psutil
    except ImportError as exc:
        raise MissingExtraError(
            'The profiler samples system use with psutil; install it with: pip install "dogclf[profile]"'
        ) from exc
    return psutil


class SystemSampler:
    """Samples system use every ``interval`` seconds on a daemon thread, from :meth:`start` to :meth:`stop`.

    Args:
        interval: Seconds between samples.

    Raises:
        MissingExtraError: When psutil is not installed.
    """

    def __init__(self, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError(f"sampling interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self._psutil = _psutil()
        self._process = self._psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Starts sampling (the first CPU reading covers the first interval)."""
        self.started = time.perf_counter()
        self._psutil.cpu_percent(percpu=True)  # primes the counters: later calls report since the previous one
        self._psutil.cpu_times_percent()
        self._process.cpu_percent()
        self._thread = threading.Thread(target=self._run, name="dogclf-system-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stops sampling (idempotent); returns the samples.

        A run shorter than one interval gets one sample here, covering the whole run (the CPU counters were primed
        by :meth:`start`), so every report has its utilisation.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)
            self._thread = None
            with self._lock:
                if not self.samples:
                    self.samples.append(self.sample())
        with self._lock:
            return list(self.samples)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = self.sample()
            with self._lock:
                self.samples.append(sample)
                if len(self.samples) > _MAX_SAMPLES:
                    self.samples = self.samples[::2]

    def sample(self) -> Sample:
        """Takes one sample now."""
        ps = self._psutil
        times = ps.cpu_times_percent()
        gpu, gpu_memory = _gpu_use()
        return Sample(
            t=time.perf_counter() - self.started,
            cpu=[float(c) for c in ps.cpu_percent(percpu=True)],
            iowait=float(getattr(times, "iowait", 0.0)),
            memory=float(ps.virtual_memory().percent),
            rss_gb=self._process.memory_info().rss / 2**30,
            gpu=gpu,
            gpu_memory=gpu_memory,
            process_cpu=self._process.cpu_percent() / (ps.cpu_count() or 1),
        )


def _gpu_use() -> tuple[list[float], list[float]]:
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return [], []
    utilisation: list[float] = []
    memory: list[float] = []
    # Only devices this process uses: querying another would create a CUDA context on it.
    for index in [i for i in range(torch.cuda.device_count()) if torch.cuda.memory_reserved(i) > 0]:
        free, total = torch.cuda.mem_get_info(index)
        memory.append(100.0 * (total - free) / total)
        with contextlib.suppress(Exception):  # no NVML (nvidia-ml-py) here: memory only
            utilisation.append(float(torch.cuda.utilization(index)))
    return (utilisation if len(utilisation) == len(memory) else []), memory
