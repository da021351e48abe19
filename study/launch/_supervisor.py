"""Local worker processes: one per slot, logs prefixed, deaths restarted, signals passed on.

The launcher only supervises processes; which cell each worker trains is decided by the study
in the database, so launchers on several machines may serve one study side by side.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from study import _exit
from study.launch._slots import LAUNCHER_ENV, Slot
from study.launch._usage import UsageWatch, gpu_watcher

_logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2
_RESTART_DELAY_S = 2.0
# A SIGTERM this soon after the first is the same stop delivered twice (`scancel --full`
# signals the batch script, which passes it on, and the launcher itself), not a second one.
_SAME_STOP_S = 2.0
_USAGE_WATCH = UsageWatch()


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
    """What ``launch`` saw: each slot's outcome, the signal that stopped it (if any), duration.

    ``refused`` names the slots whose worker stopped on bad input (exit code 2, e.g. a GPU slot
    whose backend sees no GPU); the launcher then stopped the other workers too.
    """

    outcomes: list[WorkerOutcome]
    interrupted_by: int | None
    seconds: float
    advice: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when every worker ended by itself with exit code 0 (no cell left)."""
        return (
            self.interrupted_by is None
            and not self.refused
            and all(o.returncode == 0 for o in self.outcomes)
        )


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
    usage_watch: UsageWatch | None = _USAGE_WATCH,
) -> LaunchSummary:
    """Run one worker process per slot until all have ended, and say how each ended.

    A worker that exits 0 has found no cell left. One that dies otherwise (a crash, an
    out-of-memory kill) is restarted up to ``max_restarts`` times, except with exit code 2:
    bad input, which a restart cannot fix and which the other workers most likely share (the
    same install, the same study), so they are stopped too (SIGTERM: their cells go back).
    SIGINT and SIGTERM sent to the launcher are passed
    on as SIGTERM, so each worker fails its running trial for a retry and exits; a second signal
    kills the workers at once (a SIGTERM within 2 s of a first SIGTERM counts as the same one).

    Args:
        slots: The workers to run (see ``plan_slots``).
        command: The argv of a slot's worker.
        max_restarts: Restarts allowed per slot. Defaults to `3`.
        env: Base environment of the workers. Defaults to this process's.
        out: Where prefixed worker output goes. Defaults to `sys.stderr`.
        on_tick: Called every ``tick_s`` seconds while workers run (progress lines); an
            error it raises is logged and the workers go on.
        tick_s: Seconds between ``on_tick`` calls. Defaults to `15.0`.
        usage_watch: When to sample GPU use with ``nvidia-smi`` (only with GPU slots and
            ``nvidia-smi`` installed) and log ``underuse_advice``; None: never.
            Defaults to `UsageWatch()`.
    """
    base_env = dict(os.environ if env is None else env)
    stream = out if out is not None else sys.stderr
    lock = threading.Lock()
    signals: list[int] = []
    first_signal_at = 0.0
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
        nonlocal first_signal_at
        del frame
        now = time.monotonic()
        repeat = signum == signal.SIGTERM and signals == [signal.SIGTERM]
        if repeat and now - first_signal_at < _SAME_STOP_S:
            return
        if not signals:
            first_signal_at = now
        signals.append(signum)
        kill = signal.SIGTERM if len(signals) == 1 else signal.SIGKILL
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(kill)

    def stop_all() -> None:
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)

    running: list[_Running] = []
    refused: list[str] = []
    previous = _install(on_signal)
    next_tick = started + tick_s
    watcher = gpu_watcher(slots, usage_watch)
    try:
        running.extend(_Running(slot, *start(slot)) for slot in slots)
        with watcher:
            while not all(item.done for item in running):
                now = time.monotonic()
                for item in running:
                    if item.done:
                        continue
                    if item.restart_at is not None:
                        if signals or refused:
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
                    stopping = bool(signals or refused)
                    _after_exit(item, code, stopping, max_restarts, now)
                    if code == _exit.USAGE and not stopping:
                        refused.append(item.slot.label)
                        _logger.error("stopping the other workers: they would stop the same way")
                        stop_all()
                if on_tick is not None and now >= next_tick:
                    next_tick = now + tick_s
                    _tick(on_tick)
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
        refused=tuple(refused),
    )


def _tick(on_tick: Callable[[], None]) -> None:
    """Call ``on_tick``, logging instead of raising: progress is a view, and a database away
    for a while (which the workers ride out themselves) must not stop the workers."""
    try:
        on_tick()
    except Exception as error:  # any failure of a view: the workers matter more
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _logger.warning("progress unavailable (%s); the workers go on", first)


def _after_exit(item: _Running, code: int, stopping: bool, max_restarts: int, now: float) -> None:
    label = item.slot.label
    if code == 0 or stopping:
        _logger.info("worker %s ended (exit code %d)", label, code)
        item.done = True
    elif code == _exit.USAGE:  # bad input: restarting the worker cannot help
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
    if code == _exit.UNAVAILABLE:
        return f"exit code {code}: the study database did not answer"
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
