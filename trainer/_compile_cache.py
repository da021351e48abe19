"""JAX's persistent compilation cache, shared by every worker of a machine.

Each cell compiles its train and predict steps for several shapes (batch 8, the tail batch,
the evaluation batches), and the 12 cells of a grid compile the same programs: the learning
rate is a variable, not a constant of the program. With the cache on disk, the first cell on a
machine compiles and every later one, in any worker process, loads the compiled programs.
TensorFlow has no such cache; there this is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer._cache import default_cache_dir

_logger = logging.getLogger(__name__)

FOLDER_ENV = "JAX_COMPILATION_CACHE_DIR"
_MISSES = "/jax/compilation_cache/cache_misses"
_HITS = "/jax/compilation_cache/cache_hits"


def use_persistent_compilation_cache() -> str | None:
    """Under JAX, cache compiled programs in ``$JAX_COMPILATION_CACHE_DIR``, else in the lrstudy
    cache folder; returns the folder (None under other backends). Call before the first compile.
    """
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    folder = os.environ.get(FOLDER_ENV) or str(Path(default_cache_dir()) / "jax-compilation")
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    # Every program counts: a cell's steps compile in well under JAX's default 1 s threshold on
    # small inputs, and their sum is what a GPU worker waits for per cell.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


@dataclass
class CompileCount:
    """Programs compiled (``misses``) and loaded from the persistent cache (``hits``)."""

    misses: int = 0
    hits: int = 0


@contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Count JAX's persistent-cache misses and hits while the block runs (benchmarks, tests)."""
    import jax.monitoring

    count = CompileCount()

    def listen(event: str, **_: object) -> None:
        if event == _MISSES:
            count.misses += 1
        elif event == _HITS:
            count.hits += 1

    jax.monitoring.register_event_listener(listen)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_listener(listen)
