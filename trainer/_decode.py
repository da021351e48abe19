"""Decode and resize images to uint8 RGB, and find undecodable ones, in parallel over cores."""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from PIL import Image

from trainer._errors import InputError

_logger = logging.getLogger(__name__)

# What PIL raises for a file it cannot read as an image (truncated, corrupt, not an image).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# Below this many images, starting worker processes costs more than it saves.
_MIN_PARALLEL = 256


def load_image(path: str, image_size: int) -> np.ndarray:
    """The image at ``path`` as uint8 (image_size, image_size, 3): stretched, not cropped, as
    Keras's image_dataset_from_directory does; grey images get three equal channels.

    JPEGs are decoded at the smallest DCT scale that stays at least ``image_size`` wide and
    high (deterministic, and several times faster for the multi-megapixel originals), then
    resized with Lanczos, which antialiases the remaining reduction.
    """
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft(image.mode, (image_size, image_size))
        image = _to_rgb(image)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


def decode_error(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can.

    Decodes every byte (a truncated JPEG fails) but JPEGs at 1/8 scale, which is several times
    faster than a full decode.
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except DECODE_ERRORS as error:
        return describe_error(path, error)
    return None


def describe_error(path: str, error: BaseException) -> str:
    """One line for a report: 'OSError: image file is truncated'.

    Raises:
        InputError: the file could not be read at all (an error of the file system, with an
            errno: permissions, a failing disk or share, a file gone). Recorded as a bad image,
            it would outlive its cause in the image cache.
    """
    if isinstance(error, OSError) and error.errno is not None:
        raise InputError(
            f"image {path!r} cannot be read ({error.strerror}); fix the file's permissions, "
            "the disk or the share, then run again."
        ) from error
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greys: PIL's convert would clip them to 255, so rescale to 8 bits.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        image = Image.fromarray(np.round(values).astype(np.uint8))
    return image.convert("RGB")


def parallel_map(
    function: Callable[[int, Sequence[str]], list[tuple[int, str]]],
    items: Sequence[str],
    *,
    workers: int | None,
    what: str,
) -> list[tuple[int, str]]:
    """Run ``function(start, chunk)`` over consecutive chunks of ``items`` in worker processes.

    ``function`` must be picklable (module level, or a functools.partial of one); it returns
    (position in ``items``, reason) for the items that failed, and the result joins them,
    sorted. ``workers`` None means one per core this process may run on (a Slurm task's or a
    container's cpuset, not the node's), or this process alone for a small job.
    Progress is logged as ``what: done/total images, N images/s``.
    """
    if workers is None:
        workers = 1 if len(items) < _MIN_PARALLEL else _usable_cores()
    workers = max(1, min(workers, len(items)))
    size = max(1, min(64, math.ceil(len(items) / (workers * 4))))
    starts = range(0, len(items), size)
    progress = _Progress(len(items), what)
    failures: list[tuple[int, str]] = []
    if workers == 1:
        for start in starts:
            failures.extend(function(start, items[start : start + size]))
            progress.advance(min(size, len(items) - start))
    else:
        # "spawn": the caller may have started Keras's threads, which make fork unsafe.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                pool.submit(function, start, items[start : start + size]): start
                for start in starts
            }
            for future in as_completed(futures):
                failures.extend(future.result())
                progress.advance(min(size, len(items) - futures[future]))
    progress.finish()
    return sorted(failures)


def find_undecodable(
    root: str, paths: Sequence[str], *, workers: int | None = None
) -> dict[str, str]:
    """{path: reason} for each of ``paths`` (relative to ``root``) that cannot be decoded."""
    check = functools.partial(_check_chunk, root)
    failures = parallel_map(check, paths, workers=workers, what="decode check")
    return {paths[position]: reason for position, reason in failures}


def _check_chunk(root: str, start: int, paths: Sequence[str]) -> list[tuple[int, str]]:
    errors = ((start + i, decode_error(os.path.join(root, path))) for i, path in enumerate(paths))
    return [(position, reason) for position, reason in errors if reason is not None]


class _Progress:
    """Logs 'what: done/total images, N images/s' every few seconds and at the end."""

    _EVERY_S = 5.0

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self.start = self.last = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self._EVERY_S:
            self.last = now
            _logger.info(
                "%s: %d/%d images, %.0f images/s", self.what, self.done, self.total, self.rate
            )

    def finish(self) -> None:
        seconds = time.perf_counter() - self.start
        _logger.info(
            "%s: %d images in %.1f s, %.0f images/s", self.what, self.done, seconds, self.rate
        )


def _usable_cores() -> int:
    """The cores this process may run on; the machine's where the OS cannot say (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
