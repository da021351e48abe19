"""GPU use while workers run: ``nvidia-smi`` samples, and advice when a GPU is mostly idle."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from study.launch._slots import Slot

_logger = logging.getLogger(__name__)

# Below this mean utilization a GPU is worth a second look (see ``underuse_advice``).
_BUSY_ENOUGH_PERCENT = 60.0
_SMI_USAGE_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU by ``nvidia-smi``."""

    gpu: str
    busy_percent: float
    memory_used_mib: float
    memory_total_mib: float


def parse_smi_usage(text: str) -> list[GpuSample]:
    """Samples from ``nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits``; lines with unreadable fields (``[N/A]``) are skipped."""
    samples = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        try:
            busy, used, total = (float(field) for field in fields[1:])
        except ValueError:
            continue
        samples.append(GpuSample(fields[0], busy, used, total))
    return samples


def underuse_advice(samples: Sequence[GpuSample], workers: Mapping[str, int]) -> list[str]:
    """A line per GPU that is mostly idle and has memory for twice its workers.

    A GPU qualifies when its mean utilization is below 60% and its peak memory use, doubled,
    stays under 90% of its memory: small batches (the paper's 8) leave a big GPU waiting on
    kernel launches, and more workers per GPU fill those gaps (``docs/performance.md``).

    Args:
        samples: Readings over a stretch of training (not start-up, which compiles on CPU).
        workers: GPU index -> workers launched on it; other GPUs are left out.
    """
    advice = []
    for gpu, count in workers.items():
        mine = [sample for sample in samples if sample.gpu == gpu]
        if not mine:
            continue
        busy = sum(sample.busy_percent for sample in mine) / len(mine)
        peak = max(sample.memory_used_mib for sample in mine)
        total = mine[0].memory_total_mib
        if busy < _BUSY_ENOUGH_PERCENT and 2 * peak <= 0.9 * total:
            advice.append(
                f"GPU {gpu} averaged {busy:.0f}% busy with {count} worker"
                f"{'s' if count != 1 else ''}; try --per-gpu {2 * count}"
            )
    return advice


@dataclass(frozen=True)
class UsageWatch:
    """When ``launch`` samples GPU use for its advice: every ``sample_s`` seconds, from
    ``warmup_s`` after the start (models compile first) for ``window_s`` seconds."""

    sample_s: float = 10.0
    warmup_s: float = 180.0
    window_s: float = 300.0


class _GpuWatcher:
    """Samples ``nvidia-smi`` in a thread, then logs ``underuse_advice`` once."""

    def __init__(self, smi: str, workers: dict[str, int], watch: UsageWatch) -> None:
        self.smi, self.workers, self.watch = smi, workers, watch
        self.advice: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-watch", daemon=True)

    def __enter__(self) -> _GpuWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        if self._stop.wait(self.watch.warmup_s):
            return
        samples: list[GpuSample] = []
        end = time.monotonic() + self.watch.window_s
        while time.monotonic() < end:
            samples += parse_smi_usage(self._query())
            if self._stop.wait(self.watch.sample_s):
                return  # the workers ended first: too short a run to judge
        self.advice = tuple(underuse_advice(samples, self.workers))
        for line in self.advice:
            _logger.info("%s", line)

    def _query(self) -> str:
        try:
            done = subprocess.run(
                [self.smi, _SMI_USAGE_QUERY, "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""  # one missed reading; the others still count
        return done.stdout if done.returncode == 0 else ""


class _NoWatcher:
    """Stands in for ``_GpuWatcher`` on CPU workers or without ``nvidia-smi``."""

    advice: tuple[str, ...] = ()

    def __enter__(self) -> _NoWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def gpu_watcher(slots: Sequence[Slot], watch: UsageWatch | None) -> _GpuWatcher | _NoWatcher:
    workers: dict[str, int] = {}
    for slot in slots:
        if slot.gpu is not None:
            workers[slot.gpu] = workers.get(slot.gpu, 0) + 1
    smi = shutil.which("nvidia-smi")
    if watch is None or not workers or smi is None:
        return _NoWatcher()
    return _GpuWatcher(smi, workers, watch)
