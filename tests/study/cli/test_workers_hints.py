"""The next-step hints of ``create``, ``retry``, ``extend`` and ``launch``: commands that the
CLI accepts on this machine, with or without GPUs."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import optuna
import pytest

from study.grid import load_grid_study, run_worker
from tests.study.cli import test_gpu_slots, test_study
from tests.study.cli.test_study import lrstudy

setup = test_study.setup  # the quick study's storage and flags, as the CLI tests use them
one_gpu = test_gpu_slots.one_gpu  # a stand-in nvidia-smi that lists one GPU


@pytest.fixture
def no_gpu() -> dict[str, str]:
    """A machine without GPUs: no nvidia-smi on PATH, and none given to us (so that NVML, where
    installed, finds none either)."""
    path = os.pathsep.join(
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not (Path(folder) / "nvidia-smi").exists()
    )
    return {"PATH": path, "CUDA_VISIBLE_DEVICES": ""}


def _accepted(hint: str, env: dict[str, str]) -> str:
    """Run the ``lrstudy launch`` command of a hint line with ``--dry-run``; its plan."""
    command = hint.split(": ", 1)[1].split(" (or ", 1)[0]
    program, *args = shlex.split(command)
    assert program == "lrstudy" and args[0] == "launch", hint
    done = lrstudy(*args, "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_hints_without_a_gpu_launch_cpu_workers(setup: dict, no_gpu: dict) -> None:
    launch = f"lrstudy launch --storage '{setup['url']}' --study quick --workers 1"
    created = lrstudy("create", *setup["flags"], "--set", "worker.max_retries=0", env=no_gpu)
    assert created.returncode == 0, created.stderr
    hint = created.stdout.splitlines()[-1]
    assert hint == f"start workers: {launch}"
    assert "w1 cpu" in _accepted(hint, no_gpu)

    def broken(trial: optuna.Trial) -> float:
        raise RuntimeError("broken")

    run_worker(load_grid_study(setup["url"], "quick"), broken, worker_id="t", poll_s=0.05)
    retried = lrstudy("retry", "--storage", setup["url"], "--study", "quick", env=no_gpu)
    assert retried.returncode == 0, retried.stderr
    hint = retried.stdout.splitlines()[-1]
    assert hint == f"finish them: {launch} (or run the same `lrstudy run` again)"
    assert "w1 cpu" in _accepted(hint, no_gpu)

    seeds = "grid.seed=[0, 1, 2, 3]"
    extended = lrstudy(
        "extend", "--storage", setup["url"], "--study", "quick", "--set", seeds, env=no_gpu
    )
    assert extended.returncode == 0, extended.stderr
    hint = extended.stdout.splitlines()[-1]
    assert hint == (
        f"train them: {launch} (or your `lrstudy run` command of this study with "
        f"--set '{seeds}' added)"
    )
    assert "w1 cpu" in _accepted(hint, no_gpu)

    bare = lrstudy("launch", "--storage", setup["url"], "--study", "quick", env=no_gpu)
    assert bare.returncode == 2
    assert bare.stderr.strip().endswith(
        "Example: lrstudy launch --storage URL --study quick --workers 1."
    )


def test_the_hint_with_a_gpu_launches_on_every_gpu(setup: dict, one_gpu: dict) -> None:
    created = lrstudy("create", *setup["flags"], env=one_gpu)
    assert created.returncode == 0, created.stderr
    hint = created.stdout.splitlines()[-1]
    assert hint.endswith("--study quick --gpus all"), hint
    assert "CUDA_VISIBLE_DEVICES=0" in _accepted(hint, one_gpu)
