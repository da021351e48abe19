"""Which file system holds a path, and the refusal of SQLite where its locks cannot be trusted.

SQLite serialises writers with POSIX file locks. On a network file system those locks are
emulated, cached or missing (NFS, Lustre, GPFS, BeeGFS, SMB, ...), so workers on two nodes can
both "win" a cell or corrupt the database. A cluster run therefore needs PostgreSQL; a file on a
local disk is fine for workers of one machine. Pure Python: no Optuna or SQLAlchemy import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from storage._errors import StorageError

# Read by default; tests pass ``mounts_text`` instead of faking the file system.
MOUNTS_FILE = "/proc/mounts"

# File system types (as /proc/mounts names them) whose locks SQLite must not rely on. FUSE
# mounts are named "fuse.<driver>", e.g. fuse.sshfs, fuse.glusterfs, fuse.ceph-fuse.
NETWORK_FILESYSTEMS = frozenset(
    {
        "9p", "afs", "beegfs", "ceph", "cifs", "gfs2", "glusterfs", "gpfs", "lustre", "ncpfs",
        "nfs", "nfs4", "ocfs2", "orangefs", "panfs", "pvfs2", "smb3", "smbfs", "wekafs",
        "fuse.ceph-fuse", "fuse.cephfs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.juicefs",
        "fuse.rclone", "fuse.s3fs", "fuse.sshfs", "fuse.davfs", "fuse.weka",
    }
)  # fmt: skip

_OCTAL = re.compile(r"\\([0-7]{3})")
_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?://")


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as \\040, \\011, \\012, \\134."""
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def _mounts(mounts_text: str | None) -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of a mount table."""
    if mounts_text is None:
        try:
            mounts_text = Path(MOUNTS_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []  # not Linux: nothing known, nothing refused
    table = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.append((_unescape(fields[1]), fields[2]))
    return table


def filesystem_type(path: str | os.PathLike[str], mounts_text: str | None = None) -> str:
    """The type of the file system holding ``path`` (e.g. ``ext4``, ``nfs4``); "" if unknown.

    The mount whose mount point is the longest prefix of the absolute, symlink-resolved path
    wins; with several mounts on one point, the last (the one on top) does. ``path`` need not
    exist: a database file that SQLite is about to create lives where its folder does.

    Args:
        path: A file or folder.
        mounts_text: A mount table in the format of /proc/mounts. Defaults to reading
            `MOUNTS_FILE`.
    """
    target = os.path.realpath(os.path.abspath(os.fspath(path)))
    best, kind = -1, ""
    for point, fstype in _mounts(mounts_text):
        root = point.rstrip("/") or "/"
        inside = root == "/" or target == root or target.startswith(root + "/")
        if inside and len(root) >= best:
            best, kind = len(root), fstype
    return kind


def sqlite_path(url_or_path: str) -> str | None:
    """The database file of an SQLite URL or a plain path; None for other URLs (PostgreSQL)."""
    text = str(url_or_path).strip()
    match = _SQLITE_URL.match(text)
    if match is None:
        return None if "://" in text else text
    rest = text[match.end() :]
    # sqlite:///relative.db, sqlite:////absolute.db; a query (?timeout=...) is no part of it.
    database = rest[1:] if rest.startswith("/") else rest
    database = database.split("?", 1)[0]
    if database.startswith("file:"):  # URI form: sqlite:///file:PATH?mode=rwc&uri=true
        database = database[len("file:") :]
    if not database or database == ":memory:":
        return None
    return database


def check_sqlite_local(url_or_path: str, mounts_text: str | None = None) -> None:
    """Refuse an SQLite database on a network file system; any other URL passes.

    Called before workers start (``lrstudy slurm``, ``launch``, ``worker``): there, many
    processes write the database at once, and on such a file system its locks do not hold.

    Args:
        url_or_path: A storage URL (``sqlite:///x.db``, ``postgresql://...``) or a file path.
        mounts_text: A mount table in the format of /proc/mounts. Defaults to reading it.

    Raises:
        StorageError: the SQLite file is on a network file system (one line naming it and the
            fix).
    """
    database = sqlite_path(url_or_path)
    if database is None:
        return
    kind = filesystem_type(database, mounts_text)
    if kind in NETWORK_FILESYSTEMS or kind.startswith("nfs"):
        raise StorageError(
            f"the SQLite database {database!r} is on a {kind} file system, where SQLite's "
            "locks do not hold and workers on several machines would corrupt it; use "
            "PostgreSQL (--storage postgresql://USER@HOST:5432/DBNAME) reachable from every "
            "node, or an SQLite file on a local disk for workers of one machine"
        )
