"""GPU slots through the CLI, with a stand-in ``nvidia-smi``: plans, pools, no CPU fallback."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from tests.study.cli import test_study
from tests.study.cli.test_study import lrstudy

setup = test_study.setup  # the quick study's storage and flags, as the CLI tests use them


@pytest.fixture
def one_gpu(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``nvidia-smi`` lists one GPU, as on a machine with one GPU but a
    CPU-only TensorFlow (what a plain ``pip install`` gives)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    # Asked for memory.total (MiB), it answers as an 80 GB card would; for indices, GPU 0.
    smi.write_text('#!/bin/sh\ncase "$*" in *memory.total*) echo 81559 ;; *) echo 0 ;; esac\n')
    smi.chmod(0o755)
    env = {"PATH": f"{smi.parent}{os.pathsep}{os.environ['PATH']}"}
    return env


def test_dry_run_prints_one_line_per_slot_and_starts_nothing(setup: dict, one_gpu: dict) -> None:
    assert lrstudy("create", *setup["flags"]).returncode == 0
    base = ["launch", "--storage", setup["url"], "--study", "quick", "--dry-run"]
    done = lrstudy(*base, "--gpus", "all", "--per-gpu", "2", env=one_gpu)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all("w" in line and "CUDA_VISIBLE_DEVICES=0" in line for line in lines)
    assert all("XLA_PYTHON_CLIENT_MEM_FRACTION=0.425" in line for line in lines)
    # TensorFlow workers get the same share as a cap in MiB: 0.425 of 81,559.
    assert all("LRSTUDY_TF_GPU_MEMORY_MB=34662" in line for line in lines)
    # A user given GPUs 4 and 5 (as Slurm or a shared server does) gets those, by position.
    given = {**one_gpu, "CUDA_VISIBLE_DEVICES": "4,5"}
    done = lrstudy(*base, "--gpus", "1", env=given)
    assert done.returncode == 0, done.stderr
    assert "CUDA_VISIBLE_DEVICES=5 " in done.stdout + " "
    study = optuna.load_study(study_name="quick", storage=setup["url"])
    assert all(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials())


@pytest.mark.parametrize(
    ("backend", "fix"),
    [("tensorflow", "pip install 'tensorflow[and-cuda]'"), ("jax", "pip install 'jax[cuda12]'")],
)
def test_a_gpu_slot_whose_backend_sees_no_gpu_stops_the_launch(
    setup: dict, one_gpu: dict, backend: str, fix: str
) -> None:
    created = lrstudy("create", *setup["flags"], "--set", f'train.backend="{backend}"')
    assert created.returncode == 0, created.stderr
    done = lrstudy(
        "launch", "--storage", setup["url"], "--study", "quick", "--gpus", "all",
        env=one_gpu, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    # The worker runs the study's backend and names that backend's CUDA build.
    assert f"the {backend} backend sees no GPU, so it would train on the CPU; fix: {fix}" in (
        done.stderr
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lrstudy: error: worker w1 gpu0 stopped on bad input")
    study = optuna.load_study(study_name="quick", storage=setup["url"])
    assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def test_workers_run_the_study_backend_and_refuse_a_conflicting_one(setup: dict) -> None:
    created = lrstudy("create", *setup["flags"], "--set", 'train.backend="jax"')
    assert created.returncode == 0, created.stderr
    study = ["--storage", setup["url"], "--study", "quick"]
    conflict = "--backend tensorflow conflicts with train.backend = 'jax'"
    for command, said in (
        (["worker", *study], conflict),
        (["launch", *study, "--workers", "1"], conflict),
        # run creates or resumes: a study that exists with another protocol is refused so.
        (["run", *setup["flags"]], "train.backend (stored 'jax', given 'tensorflow')"),
    ):
        done = lrstudy(*command, "--backend", "tensorflow")
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    # A shell's KERAS_BACKEND is overruled, and said so: the study's backend decides.
    done = lrstudy(
        "launch", *study, "--workers", "1", "--dry-run", env={"KERAS_BACKEND": "tensorflow"}
    )
    assert done.returncode == 0, done.stderr
    assert (
        "KERAS_BACKEND=tensorflow is overruled: study 'quick' runs under train.backend = 'jax'"
        in (done.stderr)
    )
    study_object = optuna.load_study(study_name="quick", storage=setup["url"])
    assert all(t.state == optuna.trial.TrialState.WAITING for t in study_object.get_trials())
