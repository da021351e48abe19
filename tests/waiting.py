"""Waiting for another process, and the loopback ports the tests' servers take.

One copy of each, so every test waits and picks ports the same careful way.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator


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

    Another process may take it before the server binds it. ``PostgresServer`` then starts on
    a fresh one; the dashboard and Slurm tests take those small odds.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket stays bound and never listens, so nothing else can take the port meanwhile.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield int(probe.getsockname()[1])
