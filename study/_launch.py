"""Local worker processes: one per GPU slot (or CPU worker), logs prefixed, deaths restarted.

The launcher only supervises processes; which cell each worker trains is decided by the study
in the database, so launchers on several machines may serve one study side by side.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from trainer import InputError

_logger = logging.getLogger(__name__)

# Set in each worker's environment to the launcher's pid; see follow_launcher.
LAUNCHER_ENV = "LRSTUDY_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1
# Exit code of a worker that was given bad input: restarting it cannot help.
_INPUT_ERROR_EXIT = 2
_POLL_S = 0.2
_RESTART_DELAY_S = 2.0
# What the JAX workers of one GPU may take together; the rest holds each process's CUDA
# context and cuDNN workspaces, which live outside JAX's memory pool.
_JAX_MEMORY_SHARE = 0.85
# Below this mean utilization a GPU is worth a second look (see ``underuse_advice``).
_BUSY_ENOUGH_PERCENT = 60.0
_SMI_USAGE_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"


@dataclass(frozen=True)
class Slot:
    """One worker process to keep running: its number and the GPU it sees (None: CPU only).

    ``sharing`` is the number of workers on that GPU, this one included (``--per-gpu``).
    """

    index: int
    gpu: str | None = None
    sharing: int = 1

    @property
    def name(self) -> str:
        return f"w{self.index}"

    @property
    def label(self) -> str:
        """The log prefix, e.g. ``w2 gpu1`` or ``w1 cpu``."""
        return f"{self.name} gpu{self.gpu}" if self.gpu is not None else f"{self.name} cpu"

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The worker's environment: ``base`` with only this slot's GPU visible.

        A GPU worker takes GPU memory as it needs it (TensorFlow and JAX both take most of it
        at start by default), so that workers can share a GPU and ``nvidia-smi`` shows what
        they use; with ``sharing`` K > 1, each JAX worker is also capped at 1/K of the GPU's
        memory share. Values already in ``base`` are kept.
        """
        env = dict(base)
        # A CPU worker sees no GPU, so it cannot take memory from the GPU workers beside it.
        env["CUDA_VISIBLE_DEVICES"] = self.gpu if self.gpu is not None else ""
        env["PYTHONUNBUFFERED"] = "1"
        env[LAUNCHER_ENV] = str(os.getpid())
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines flood logs
        if self.gpu is not None:
            env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            if self.sharing > 1:
                share = _JAX_MEMORY_SHARE / self.sharing
                env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{share:.3f}")
        return env


def follow_launcher() -> None:
    """End this worker with SIGTERM when the launcher that started it dies, even by SIGKILL.

    Workers run in sessions of their own (so that a terminal's Ctrl-C reaches the launcher
    only), and so would outlive a launcher killed by the out-of-memory killer; SIGTERM returns
    their running trials to the queue. Linux only (``PR_SET_PDEATHSIG``); elsewhere a no-op.
    """
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class WorkerOutcome:
    """How one slot ended: the last exit code and how often it was restarted."""

    slot: Slot
    returncode: int | None
    restarts: int


@dataclass(frozen=True)
class LaunchSummary:
    """What ``launch`` saw: each slot's outcome, the signal that stopped it (if any), duration."""

    outcomes: list[WorkerOutcome]
    interrupted_by: int | None
    seconds: float
    advice: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when every worker ended by itself with exit code 0 (no cell left)."""
        return self.interrupted_by is None and all(o.returncode == 0 for o in self.outcomes)


def find_gpus() -> list[str]:
    """Indices of this machine's NVIDIA GPUs: NVML when installed, else nvidia-smi; [] if none.

    These are physical indices as ``nvidia-smi`` shows them, which is what
    ``CUDA_VISIBLE_DEVICES`` selects in a fresh process.
    """
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        try:
            pynvml.nvmlInit()
            try:
                return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            _logger.debug("NVML found no GPU (%s); trying nvidia-smi", error)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        _logger.warning("nvidia-smi did not answer (%s); assuming no GPU", error)
        return []
    if done.returncode != 0:
        _logger.warning("nvidia-smi failed (%s); assuming no GPU", done.stderr.strip()[:200])
        return []
    return parse_smi_indices(done.stdout)


def parse_smi_indices(text: str) -> list[str]:
    """GPU indices from ``nvidia-smi --query-gpu=index --format=csv,noheader`` output."""
    return [line.strip() for line in text.splitlines() if line.strip().isdigit()]


def plan_slots(
    *,
    gpus: str | None = None,
    workers: int | None = None,
    per_gpu: int = 1,
    available: Callable[[], list[str]] = find_gpus,
) -> list[Slot]:
    """The worker slots for ``--gpus``/``--workers``/``--per-gpu``.

    Args:
        gpus: ``"all"`` or comma-separated GPU indices such as ``"0,1,3"``; each must exist.
        workers: A number of CPU workers instead of GPU slots.
        per_gpu: Workers sharing each GPU (small batches leave a GPU idle). Defaults to `1`.
        available: Lists this machine's GPUs. Defaults to `find_gpus`.

    With neither ``gpus`` nor ``workers``: one slot per GPU found, else one CPU worker.
    """
    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise InputError(f"--per-gpu must be an integer >= 1; got {per_gpu!r}. Use --per-gpu 1.")
    if gpus is not None and workers is not None:
        raise InputError(
            f"--gpus and --workers exclude each other; got --gpus {gpus} and --workers "
            f"{workers}. Use --gpus for GPU workers or --workers N for CPU workers."
        )
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"--workers must be an integer >= 1; got {workers!r}.")
        return [Slot(index) for index in range(1, workers + 1)]
    if gpus is None:
        found = available()
        if not found:
            return [Slot(1)]
        chosen = found
    else:
        chosen = _chosen_gpus(gpus, available())
    return [
        Slot(index, gpu, per_gpu)
        for index, gpu in enumerate((gpu for gpu in chosen for _ in range(per_gpu)), start=1)
    ]


def _chosen_gpus(gpus: str, found: list[str]) -> list[str]:
    where = f"this machine has GPUs {','.join(found)}" if found else "this machine has no GPU"
    if gpus.strip() == "all":
        if not found:
            raise InputError(
                "--gpus all found no GPU (neither NVML nor nvidia-smi lists one); "
                "use --workers N for CPU workers."
            )
        return found
    chosen = [part.strip() for part in gpus.split(",")]
    for gpu in chosen:
        if not gpu.isdigit():
            raise InputError(
                f"--gpus must be 'all' or GPU indices like 0,1,3; got {gpus!r}. ({where})"
            )
    if len(set(chosen)) != len(chosen):
        raise InputError(f"--gpus lists a GPU twice: {gpus!r}; use --per-gpu K to share a GPU.")
    missing = [gpu for gpu in chosen if gpu not in found]
    if missing:
        raise InputError(
            f"--gpus names GPU {','.join(missing)}, which does not exist; {where}. "
            "Use --gpus all or --workers N."
        )
    return chosen


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


def _watcher(slots: Sequence[Slot], watch: UsageWatch | None) -> _GpuWatcher | _NoWatcher:
    workers: dict[str, int] = {}
    for slot in slots:
        if slot.gpu is not None:
            workers[slot.gpu] = workers.get(slot.gpu, 0) + 1
    smi = shutil.which("nvidia-smi")
    if watch is None or not workers or smi is None:
        return _NoWatcher()
    return _GpuWatcher(smi, workers, watch)


@dataclass
class _Running:
    slot: Slot
    process: subprocess.Popen[str]
    reader: threading.Thread
    restarts: int = 0
    returncode: int | None = None
    restart_at: float | None = None
    done: bool = False


def launch(
    slots: Sequence[Slot],
    command: Callable[[Slot], list[str]],
    *,
    max_restarts: int = 3,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 15.0,
    usage_watch: UsageWatch | None = UsageWatch(),
) -> LaunchSummary:
    """Run one worker process per slot until all have ended, and say how each ended.

    A worker that exits 0 has found no cell left. One that dies otherwise (a crash, an
    out-of-memory kill) is restarted up to ``max_restarts`` times, except with exit code 2
    (bad input, which a restart cannot fix). SIGINT and SIGTERM sent to the launcher are passed
    on as SIGTERM, so each worker fails its running trial for a retry and exits; a second signal
    kills the workers at once.

    Args:
        slots: The workers to run (see ``plan_slots``).
        command: The argv of a slot's worker.
        max_restarts: Restarts allowed per slot. Defaults to `3`.
        env: Base environment of the workers. Defaults to this process's.
        out: Where prefixed worker output goes. Defaults to `sys.stderr`.
        on_tick: Called every ``tick_s`` seconds while workers run (progress lines).
        tick_s: Seconds between ``on_tick`` calls. Defaults to `15.0`.
        usage_watch: When to sample GPU use with ``nvidia-smi`` (only with GPU slots and
            ``nvidia-smi`` installed) and log ``underuse_advice``; None: never.
            Defaults to `UsageWatch()`.
    """
    base_env = dict(os.environ if env is None else env)
    stream = out if out is not None else sys.stderr
    lock = threading.Lock()
    signals: list[int] = []
    started = time.monotonic()

    def start(slot: Slot) -> tuple[subprocess.Popen[str], threading.Thread]:
        # Own session: a terminal's Ctrl-C reaches only the launcher, which passes it on once.
        process = subprocess.Popen(
            command(slot),
            env=slot.environment(base_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        reader = threading.Thread(
            target=_copy_lines, args=(process, f"[{slot.label}] ", stream, lock), daemon=True
        )
        reader.start()
        _logger.info("started worker %s (pid %d)", slot.label, process.pid)
        return process, reader

    def on_signal(signum: int, frame: object) -> None:
        del frame
        signals.append(signum)
        kill = signal.SIGTERM if len(signals) == 1 else signal.SIGKILL
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(kill)

    running: list[_Running] = []
    previous = _install(on_signal)
    next_tick = started + tick_s
    watcher = _watcher(slots, usage_watch)
    try:
        running.extend(_Running(slot, *start(slot)) for slot in slots)
        with watcher:
            while not all(item.done for item in running):
                now = time.monotonic()
                for item in running:
                    if item.done:
                        continue
                    if item.restart_at is not None:
                        if signals:
                            item.done = True
                        elif now >= item.restart_at:
                            item.restart_at = None
                            item.process, item.reader = start(item.slot)
                        continue
                    code = item.process.poll()
                    if code is None:
                        continue
                    item.reader.join(timeout=5)
                    item.returncode = code
                    _after_exit(item, code, bool(signals), max_restarts, now)
                if on_tick is not None and now >= next_tick:
                    next_tick = now + tick_s
                    on_tick()
                time.sleep(_POLL_S)
    finally:
        _restore(previous)
        for item in running:
            if item.process.poll() is None:  # only when launch itself failed
                item.process.kill()
                item.process.wait()
    return LaunchSummary(
        outcomes=[WorkerOutcome(item.slot, item.returncode, item.restarts) for item in running],
        interrupted_by=signals[0] if signals else None,
        seconds=time.monotonic() - started,
        advice=watcher.advice,
    )


def _after_exit(item: _Running, code: int, stopping: bool, max_restarts: int, now: float) -> None:
    label = item.slot.label
    if code == 0 or stopping:
        _logger.info("worker %s ended (exit code %d)", label, code)
        item.done = True
    elif code == _INPUT_ERROR_EXIT:
        _logger.error("worker %s stopped on bad input (exit code 2); not restarting it", label)
        item.done = True
    elif item.restarts >= max_restarts:
        _logger.error(
            "worker %s died (%s) and was restarted %d times already; giving up on this slot",
            label,
            _describe(code),
            item.restarts,
        )
        item.done = True
    else:
        item.restarts += 1
        _logger.warning(
            "worker %s died (%s); restarting it (%d of %d)",
            label,
            _describe(code),
            item.restarts,
            max_restarts,
        )
        item.restart_at = now + _RESTART_DELAY_S


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _copy_lines(
    process: subprocess.Popen[str], prefix: str, stream: TextIO, lock: threading.Lock
) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            stream.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            stream.flush()
    process.stdout.close()


def _install(handler: Callable[[int, object], None]) -> dict[int, object]:
    # Signal handlers can only be set from the main thread; elsewhere the caller owns signals.
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
