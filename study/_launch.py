"""Local worker processes: one per GPU slot (or CPU worker), logs prefixed, deaths restarted.

The launcher only supervises processes; which cell each worker trains is decided by the study
in the database, so launchers on several machines may serve one study side by side.
"""

from __future__ import annotations

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

# Exit code of a worker that was given bad input: restarting it cannot help.
_INPUT_ERROR_EXIT = 2
_POLL_S = 0.2
_RESTART_DELAY_S = 2.0


@dataclass(frozen=True)
class Slot:
    """One worker process to keep running: its number and the GPU it sees (None: CPU only)."""

    index: int
    gpu: str | None = None

    @property
    def name(self) -> str:
        return f"w{self.index}"

    @property
    def label(self) -> str:
        """The log prefix, e.g. ``w2 gpu1`` or ``w1 cpu``."""
        return f"{self.name} gpu{self.gpu}" if self.gpu is not None else f"{self.name} cpu"

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The worker's environment: ``base`` with only this slot's GPU visible."""
        env = dict(base)
        # A CPU worker sees no GPU, so it cannot take memory from the GPU workers beside it.
        env["CUDA_VISIBLE_DEVICES"] = self.gpu if self.gpu is not None else ""
        env["PYTHONUNBUFFERED"] = "1"
        return env


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
        Slot(index, gpu)
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
    try:
        running.extend(_Running(slot, *start(slot)) for slot in slots)
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
