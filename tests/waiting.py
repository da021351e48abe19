"""Waiting for another process, and the loopback ports the tests' servers take.

One copy of each, so every test waits and picks ports the same careful way.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial


def wait_for(
    condition: Callable[[], object], timeout_s: float = 60.0, what: str = "", poll_s: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``.

    The default pace leaves the two cores to the processes under test: most conditions read
    databases, checkpoints, logs or /proc.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def free_port() -> int:
    """A loopback port free now, for a server that must bind it itself.

    Another process may take it before the server binds it: ``PostgresServer``,
    ``serve_on_a_free_port`` and the Slurm cluster then start again on fresh ports.
    """
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now (see ``free_port``)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def serve_on_a_free_port(
    start: Callable[[int], subprocess.Popen[str]],
    answers: Callable[[int], bool],
    *,
    what: str,
    timeout_s: float = 120.0,
    tries: int = 3,
) -> tuple[subprocess.Popen[str], int]:
    """Start a server with ``start(port)`` and wait until ``answers(port)``; the server, port.

    A server that exits first, saying its port "is already in use" (another process took it
    after the probe), is started again on a fresh port; any other exit fails with its stderr,
    which ``start`` must pipe.
    """
    for attempt in range(tries):
        port = free_port()
        server = start(port)
        try:
            wait_for(partial(_up_or_gone, server, answers, port), timeout_s, what)
        except BaseException:
            server.kill()
            server.communicate()
            raise
        if server.poll() is None:
            return server, port
        stderr = server.communicate()[1]
        if "already in use" not in stderr or attempt == tries - 1:
            raise AssertionError(f"{what} exited with {server.returncode}: {stderr[-2000:]}")
        warnings.warn(
            f"port {port} was taken before the server bound it; trying another", stacklevel=2
        )
    raise AssertionError("tries must be at least 1")


def _up_or_gone(server: subprocess.Popen[str], answers: Callable[[int], bool], port: int) -> bool:
    return server.poll() is not None or answers(port)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket stays bound and never listens, so nothing else can take the port meanwhile.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield int(probe.getsockname()[1])
