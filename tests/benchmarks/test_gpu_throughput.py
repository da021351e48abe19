"""benchmarks/gpu_throughput.py at its tiny size, as on a JAX-only machine: it runs and reports,
and its grid projection adds up what it measured."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@cache
def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_paper_grid_comes_from_the_preset_and_its_tails_are_counted() -> None:
    gpu = _benchmark()
    assert gpu.Grid(cells=12, epochs=60, train=2930, val=2426, test=500) == gpu.PAPER_GRID
    assert (gpu.FULL.batch, gpu.FULL.eval_batch, gpu.FULL.image_size) == (8, 64, 224)
    assert gpu.FULL.images >= 8192  # the ceiling's epochs must not end every few steps
    # The batch shapes each compile once per cell: 2930 % 8, 2426 % 64 and 500 % 64.
    assert gpu._shapes(2930, 8) == [8, 2]
    assert gpu._shapes(2426, 64) == [64, 58]
    assert gpu._shapes(500, 64) == [64, 52]
    assert gpu._shapes(16, 8) == [8] and gpu._shapes(3, 8) == [3]


def test_the_projection_runs_the_last_round_at_its_own_number_of_workers() -> None:
    gpu = _benchmark()
    grid = gpu.PAPER_GRID
    projection = gpu.project(grid, 8, 100.0, 10.0, {8: 30.0, 4: 20.0})
    assert projection["rounds"] == [8, 4]  # 12 cells on 8 workers: a second round of 4
    assert projection["cell_starts_s"] == 200.0  # every cell of a round compiles anew
    assert projection["epochs_s"] == 60 * 30.0 + 60 * 20.0
    assert projection["total_minutes"] == pytest.approx((200.0 + 3000.0) / 60)
    assert projection["cached_total_minutes"] == pytest.approx((100.0 + 10.0 + 3000.0) / 60)
    assert gpu.project(grid, 5, 1.0, None, {5: 1.0, 2: 1.0})["rounds"] == [5, 5, 2]
    # A round of 4 workers needs an epoch measured with 4: none is made up.
    assert gpu.project(grid, 8, 100.0, 10.0, {8: 30.0}) is None


@pytest.mark.slow
def test_the_gpu_benchmark_runs_tiny_without_tensorflow(tmp_path: Path) -> None:
    # The GPU machine has JAX but no TensorFlow: a stand-in package that refuses to import
    # proves that neither the benchmark nor the trainer modules it uses need TensorFlow.
    blocked = tmp_path / "blocked" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([str(blocked.parent), str(ROOT)]),
    }
    out, markdown = tmp_path / "tiny.json", tmp_path / "tiny.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--tiny",
         "--out", str(out), "--markdown", str(markdown)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["skipped"] == []
    assert report["device"].startswith("cpu")
    assert report["float32_precision"]["runs_as"] == "fp32"  # a CPU has no TF32
    assert set(report["matmul_tflops"]) == {"fp32", "bf16", "fp16"}
    assert all(rate > 0 for rate in report["matmul_tflops"].values())
    # small_cnn at 32 px: 3x3 convolutions 3->16 (30x30), 16->32 (13x13), 32->64 (4x4), dense.
    assert report["flops_per_image"] == 2 * (
        30 * 30 * 16 * 9 * 3 + 13 * 13 * 32 * 9 * 16 + 4 * 4 * 64 * 9 * 32 + 64
    )
    assert 0 < report["feed_ms"] < 50
    assert report["checkpoint"]["bytes"] > 0 and report["checkpoint"]["seconds"] > 0

    # Cell starts: every phase and batch shape of the tiny grid (42 % 8, 30 % 16, 20 % 16).
    starts = {(s["variant"], s["deterministic"], s["workers"]): s for s in report["cell_start"]}
    assert set(starts) == {
        ("fp32-xla", True, 1), ("mixed-xla", True, 1), ("fp32-xla", True, 2),
        ("mixed-xla", True, 2), ("fp32-xla", False, 1),
    }  # fmt: skip
    for start in starts.values():
        phases = start["phases"]
        assert list(phases) == ["build", "train", "validation", "test"]
        assert phases["train"]["shapes"] == [8, 2]
        assert phases["validation"]["shapes"] == [16, 14]
        assert phases["test"]["shapes"] == [16, 4]
        assert start["seconds"] == pytest.approx(sum(p["seconds"] for p in phases.values()))
    # The lone process compiles each step shape; the packed workers load them from its cache.
    for variant in ("fp32-xla", "mixed-xla"):
        cold, warm = starts[(variant, True, 1)]["phases"], starts[(variant, True, 2)]["phases"]
        assert cold["train"]["compiled"] >= 2 and cold["validation"]["compiled"] >= 2
        assert cold["test"]["compiled"] >= 1  # the test tail, a shape of its own
        for name in ("train", "validation", "test"):
            assert warm[name]["compiled"] == 0 and warm[name]["loaded"] >= 1, (variant, name)

    runs = {(r["kind"], r["variant"], r["deterministic"], r["batch"], r["workers"]): r
            for r in report["runs"]}  # fmt: skip
    assert set(runs) == {
        ("fit", "fp32-xla", True, 32, 1), ("fit", "mixed-xla", True, 32, 1),
        ("epoch", "fp32-xla", True, 8, 1), ("epoch", "fp32-xla", True, 8, 2),
        ("epoch", "mixed-xla", True, 8, 1), ("epoch", "mixed-xla", True, 8, 2),
        ("epoch", "fp32-xla", False, 8, 1),
        ("fit", "fp32-eager", True, 8, 1), ("fit", "fp32-eager", True, 32, 1),
        ("fit", "fp32-xla", True, 8, 1), ("fit", "fp32-xla-spe4", True, 8, 1),
        ("fit", "fp32-xla-spe16", True, 8, 1),
    }  # fmt: skip
    for key, run in runs.items():
        assert run["images_per_s"] > 0 and len(run["step_ms"]) == run["workers"]
        assert run["of_matmul_rate"] > 0
        assert (run["of_ceiling"] is None) == (run["deterministic"] is False), key
    assert runs[("fit", "fp32-xla", True, 32, 1)]["of_ceiling"] == 1.0
    assert runs[("fit", "fp32-xla", True, 32, 1)]["images"] == 256  # the whole shared file
    for key, run in runs.items():
        if run["kind"] == "epoch":
            assert run["images"] == 42
            assert run["fit_s"] > 0 and run["validation_s"] > 0 and run["checkpoint_s"] > 0
            assert run["epoch_s"] >= run["fit_s"]
            if run["workers"] == 1:  # the epoch's wall time holds its checkpoint save
                parts = run["fit_s"] + run["validation_s"] + run["checkpoint_s"]
                assert run["epoch_s"] >= parts, key

    # The projection adds the measured pieces: 3 cells on 2 workers leave a last round of 1.
    projections = {(p["variant"], p["workers"]): p for p in report["grid_projection"]}
    assert set(projections) == {(v, k) for v in ("fp32-xla", "mixed-xla") for k in (1, 2)}
    for (variant, workers), projection in projections.items():
        epoch_s = {k: runs[("epoch", variant, True, 8, k)]["epoch_s"] for k in (1, 2)}
        cold, warm = starts[(variant, True, 1)]["seconds"], starts[(variant, True, 2)]["seconds"]
        rounds = [1, 1, 1] if workers == 1 else [2, 1]
        assert projection["rounds"] == rounds
        assert projection["cell_starts_s"] == pytest.approx(len(rounds) * cold)
        assert projection["epochs_s"] == pytest.approx(2 * sum(epoch_s[k] for k in rounds))
        assert projection["total_minutes"] == pytest.approx(
            (projection["cell_starts_s"] + projection["epochs_s"]) / 60
        )
        assert projection["cached_total_minutes"] == pytest.approx(
            (projection["epochs_s"] + cold + (len(rounds) - 1) * warm) / 60
        )
    table = markdown.read_text()
    assert "| epoch | fp32-xla | fp32 | True | 8 | 2 |" in table
    assert "| fp32-xla | 2 | 2 (1 in the last) |" in table
    assert table.strip() in done.stdout


@pytest.mark.slow
def test_inception_v3_flops_at_224_px_match_the_published_count() -> None:
    from trainer import build_model

    model = build_model("inception_v3", 224, "none", optimizer="adam", learning_rate=1e-3)
    # About 3.2 G multiply-adds per image at 224 px (5.7 G at 299 px, scaled by the area);
    # counting only convolutions and dense layers gives a little less.
    assert _benchmark()._forward_flops(model) == pytest.approx(6.4e9, rel=0.15)


@pytest.mark.slow
def test_the_determinism_probe_compiles_the_max_pool_gradient_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "determinism.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "jax_determinism_probe.py"), "--out", str(out)],
        env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [run["flag"] for run in runs] == ["off", "on"]
    assert "--xla_gpu_deterministic_ops=true" in runs[1]["xla_flags"].split()
    assert "deterministic_ops" not in runs[0]["xla_flags"]
    # On a CPU XLA accepts the flag and is deterministic anyway.
    assert all(run["compiles"] and run["repeatable"] for run in runs)
    assert "flag on: compiled" in done.stdout and "two runs bitwise equal: True" in done.stdout
