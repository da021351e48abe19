"""benchmarks/gpu_throughput.py at its tiny size, as on a JAX-only machine: it runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    assert set(report["matmul_tflops"]) == {"float32", "bfloat16", "float16"}
    assert all(rate > 0 for rate in report["matmul_tflops"].values())
    # small_cnn at 32 px: 3x3 convolutions 3->16 (30x30), 16->32 (13x13), 32->64 (4x4), dense.
    assert report["flops_per_image"] == 2 * (
        30 * 30 * 16 * 9 * 3 + 13 * 13 * 32 * 9 * 16 + 4 * 4 * 64 * 9 * 32 + 64
    )
    assert 0 < report["feed_ms"] < 50
    runs = {(r["variant"], r["batch"], r["workers"]): r for r in report["runs"]}
    assert set(runs) == {
        ("fp32-xla", 32, 1), ("mixed-xla", 32, 1), ("fp32-eager", 32, 1),
        ("fp32-xla", 8, 1), ("fp32-xla", 8, 2), ("mixed-xla", 8, 1), ("mixed-xla", 8, 2),
        ("fp32-eager", 8, 1),
    }  # fmt: skip
    for run in runs.values():
        assert run["images_per_s"] > 0 and len(run["step_ms"]) == run["workers"]
        assert run["of_ceiling"] > 0 and run["of_matmul_rate"] > 0
    assert runs[("fp32-xla", 32, 1)]["of_ceiling"] == 1.0
    assert [p["variant"] for p in report["grid_projection"]] == ["fp32-xla", "mixed-xla"]
    for projection in report["grid_projection"]:
        assert projection["total_minutes"] == pytest.approx(
            (projection["train_s"] + projection["validation_s"] + projection["build_s"]) / 60
        )
    table = markdown.read_text()
    assert "| fp32-xla | 8 | 2 |" in table and "paper grid, fp32-xla" in table
    assert table.strip() in done.stdout


@pytest.mark.slow
def test_inception_v3_flops_at_224_px_match_the_published_count() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_throughput import _forward_flops
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from trainer import build_model

    model = build_model("inception_v3", 224, "none", optimizer="adam", learning_rate=1e-3)
    # About 3.2 G multiply-adds per image at 224 px (5.7 G at 299 px, scaled by the area);
    # counting only convolutions and dense layers gives a little less.
    assert _forward_flops(model) == pytest.approx(6.4e9, rel=0.15)
