"""JAX's persistent compilation cache: the second cell of a grid compiles nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import BACKEND
from trainer import DataConfig

ROOT = Path(__file__).resolve().parents[2]

# Two cells of one grid in one worker process (another learning rate, another seed): the
# programs are the same, as the learning rate is a variable, so the second loads all of them.
_TWO_CELLS = """
import json, sys
from trainer import CellConfig, DataConfig, train_cell
from trainer._compile_cache import count_compiles
data = DataConfig(sys.argv[1], split="kaggle", cache_dir=sys.argv[3])
counts = []
for learning_rate, seed in ((0.01, 0), (0.001, 1)):
    config = CellConfig(data=data, learning_rate=learning_rate, seed=seed,
                        out_dir=f"{sys.argv[2]}/lr{learning_rate}-seed{seed}", epochs=1,
                        batch_size=8, eval_batch_size=16, image_size=32, model="small_cnn",
                        weights="none", backend="jax")
    with count_compiles() as count:
        train_cell(config)
    counts.append([count.misses, count.hits])
print("COUNTS", json.dumps(counts))
"""


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only: the trainer's JAX pass runs it")
def test_a_second_cell_compiles_nothing_new(data: DataConfig, tmp_path: Path) -> None:
    cache = tmp_path / "jax-cache"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _TWO_CELLS,
            str(data.root),
            str(tmp_path / "cells"),
            str(data.cache_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_COMPILATION_CACHE_DIR": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("COUNTS"))
    (first_misses, _), (second_misses, second_hits) = json.loads(line.split(" ", 1)[1])
    assert first_misses > 0  # the first cell on this machine compiles its steps
    assert second_misses == 0 and second_hits > 0
    assert any(cache.iterdir())  # on disk, for the other workers of the machine
