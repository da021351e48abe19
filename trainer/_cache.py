"""The preprocessed image pool on disk: built once per image size, shared by every process."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
from filelock import FileLock, Timeout

from trainer._atomic import remove_leftovers, temporary_path, write_atomic
from trainer._decode import DECODE_ERRORS, describe_error, load_image, parallel_map
from trainer._errors import InputError
from trainer._scan import ImageRecord

_logger = logging.getLogger(__name__)

# Bump when load_image changes its output, so that old caches are not reused.
PREPROCESS_VERSION = 1


@dataclass(frozen=True, eq=False)
class PoolCache:
    """Every scanned image of a data root at one size, as rows of a read-only memmap."""

    images: np.ndarray  # uint8 (N, s, s, 3), row i holds paths[i]; zeros for a bad image
    paths: tuple[str, ...]
    key: str
    path: str  # the .npy file
    bad: dict[str, str]  # path -> why it cannot be decoded
    built: bool  # whether this call built it (False: reused)
    images_per_second: float  # of the build, by this process or the one that built it


def default_cache_dir() -> str:
    """The per-user cache folder (``~/.cache/lrstudy`` on Linux)."""
    return platformdirs.user_cache_dir("lrstudy")


def cache_key(records: Sequence[ImageRecord], image_size: int) -> str:
    """Hash of what the cached pixels depend on: each file's path, size and mtime, the image
    size and the preprocessing version. Any edited, added or removed file gives a new key."""
    digest = hashlib.sha256(f"v{PREPROCESS_VERSION} {image_size}px\n".encode())
    for record in records:
        digest.update(f"{record.path}\0{record.size}\0{record.mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_files(cache_dir: str, key: str, image_size: int) -> tuple[str, str, str]:
    """Paths of the cache's array (.npy), index (.json) and build lock (.lock)."""
    folder = os.path.abspath(os.path.expanduser(cache_dir))
    stem = os.path.join(folder, f"pool-{image_size}px-{key[:20]}")
    return f"{stem}.npy", f"{stem}.json", f"{stem}.lock"


def open_pool_cache(
    root: str,
    records: Sequence[ImageRecord],
    image_size: int,
    cache_dir: str | None = None,
    *,
    workers: int | None = None,
) -> PoolCache:
    """Reuse the cache of these records at this size, or build it first.

    Note:
        Processes that start together build it once: the first takes a file lock and builds
        into temporary files that it renames when complete; the others wait on the lock, then
        find the finished cache. A reader never sees a half-written array.
    """
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(records, image_size)
    npy, index_path, lock_path = cache_files(cache_dir, key, image_size)
    paths = tuple(record.path for record in records)
    index = _read_index(index_path, npy, key, paths, image_size)
    built = False
    if index is None:
        try:
            os.makedirs(os.path.dirname(npy), exist_ok=True)
            lock = FileLock(lock_path)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                _logger.info("image cache: waiting for another process to build %s", npy)
                lock.acquire()
            try:
                index = _read_index(index_path, npy, key, paths, image_size)
                if index is None:
                    index = _build(root, paths, image_size, key, npy, index_path, workers)
                    built = True
            finally:
                lock.release()
        except OSError as error:
            raise InputError(
                f"cache_dir {cache_dir!r} cannot hold the image cache ({error}); "
                "free some space or pass --cache-dir to a writable folder."
            ) from error
    if not built:
        _logger.info("image cache: reused %s (%d images at %d px)", npy, len(paths), image_size)
    return PoolCache(
        images=np.load(npy, mmap_mode="r"),
        paths=paths,
        key=key,
        path=npy,
        bad=dict(index["bad"]),
        built=built,
        images_per_second=float(index["images_per_second"]),
    )


def _read_index(
    index_path: str, npy: str, key: str, paths: tuple[str, ...], image_size: int
) -> dict | None:
    """The index of a complete, intact cache for exactly these files, or None.

    A cache whose array was cut short or altered on disk (its SHA-256 no longer matches the
    index) is logged and treated as absent, so that it is rebuilt rather than trained on.
    """
    try:
        with open(index_path, encoding="utf-8") as file:
            index = json.load(file)
    except (OSError, ValueError):
        return None
    if index.get("key") != key or tuple(index.get("paths", ())) != paths:
        return None
    try:
        shape = np.load(npy, mmap_mode="r").shape
        intact = shape == (len(paths), image_size, image_size, 3) and _verified(
            npy, index.get("sha256")
        )
    except (OSError, ValueError) as error:
        intact, shape = False, f"unreadable ({error})"
    if not intact:
        _logger.warning(
            "image cache %s is damaged (shape %s or checksum wrong); rebuilding it", npy, shape
        )
        return None
    return index


# Files this process has checked: (path, inode, size, mtime) -> digest; each is read once.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _verified(npy: str, expected: str | None) -> bool:
    stat = os.stat(npy)
    identity = (os.path.abspath(npy), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if identity not in _VERIFIED:
        _VERIFIED[identity] = _file_sha256(npy)
    return expected is not None and _VERIFIED[identity] == expected


def _file_sha256(path: str) -> str:
    with open(path, "rb") as file:
        if sys.version_info >= (3, 11):
            return hashlib.file_digest(file, "sha256").hexdigest()
        digest = hashlib.sha256()  # Python 3.10 has no hashlib.file_digest
        for chunk in iter(functools.partial(file.read, 1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def _build(
    root: str,
    paths: tuple[str, ...],
    image_size: int,
    key: str,
    npy: str,
    index_path: str,
    workers: int | None,
) -> dict:
    _logger.info("image cache: building %s from %d images at %d px", npy, len(paths), image_size)
    remove_leftovers(Path(npy))  # of a build killed before; we hold the build lock
    temporary = str(temporary_path(Path(npy)))
    try:
        np.lib.format.open_memmap(
            temporary, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size, 3)
        ).flush()
        start = time.perf_counter()
        failures = parallel_map(
            functools.partial(_decode_chunk, temporary, root, image_size),
            paths,
            workers=workers,
            what=f"image cache {image_size}px",
        )
        seconds = time.perf_counter() - start
        index = {
            "key": key,
            "image_size": image_size,
            "preprocess_version": PREPROCESS_VERSION,
            "paths": list(paths),
            "bad": {paths[position]: reason for position, reason in failures},
            "seconds": round(seconds, 3),
            "images_per_second": round(len(paths) / max(seconds, 1e-9), 1),
            "built_by": f"{socket.gethostname()}:{os.getpid()}",
            # Of the finished array: a reader detects a file cut short or altered since.
            "sha256": _file_sha256(temporary),
        }
        os.replace(temporary, npy)
        # The index goes last: its presence marks the array as complete.
        write_atomic(index_path, json.dumps(index))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    _logger.info(
        "image cache: built %s (%d images, %.0f images/s)",
        npy,
        len(paths),
        index["images_per_second"],
    )
    return index


def _decode_chunk(
    npy: str, root: str, image_size: int, start: int, paths: Sequence[str]
) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows ``start..`` of the array file; (row, reason) of failures."""
    images = np.load(npy, mmap_mode="r+")
    failures = []
    for offset, path in enumerate(paths):
        full = os.path.join(root, path)
        try:
            images[start + offset] = load_image(full, image_size)
        except DECODE_ERRORS as error:
            failures.append((start + offset, describe_error(full, error)))
    # No flush: the rows sit in the shared page cache, which every process reads; syncing them
    # to disk per chunk would only slow the build (a crash before the index exists rebuilds).
    return failures
