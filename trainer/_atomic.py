"""Files that appear whole or not at all, for every reader on the machine."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a private temporary file and a rename.

    Another process (a second worker, a reader of the cache index) sees the old file or the new
    one, never a half-written one; the temporary name carries the pid, so that writers racing
    for the same path do not share one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
