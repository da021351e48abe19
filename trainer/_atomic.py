"""Files that appear whole or not at all, for every reader on the machine."""

from __future__ import annotations

import glob
import os
import socket
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a private temporary file and a rename.

    Another process (a second worker, a reader of the cache index) sees the old file or the new
    one, never a half-written one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(target)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def temporary_path(target: Path) -> Path:
    """This process's temporary file for ``target``, named by host and pid: writers racing for
    one path, here or on another machine sharing the folder, never share one, and a killed
    writer's leftover can be told from a live one's (``remove_leftovers``)."""
    return target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def remove_leftovers(target: Path) -> None:
    """Delete the temporary files of ``target`` that writers on this machine left when they were
    killed: a SIGKILL skips every cleanup, and a 224 px image cache's is 880 MB."""
    prefix = f".{target.name}.{socket.gethostname()}."
    for leftover in target.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
