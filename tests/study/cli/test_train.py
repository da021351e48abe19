"""``lrstudy train`` as a user runs it: files, one-line errors, a SIGKILL and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_dataset

LRSTUDY = [sys.executable, "-m", "study"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_train") / "data"
    write_dataset(root)
    return root


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *LRSTUDY, "train", str(data_dir), "--lr", "0.003", "--seed", "1", "--model",
        "small_cnn", "--image-size", "32", "--weights", "none", "--split", "kaggle",
        "--cache-dir", str(out.parent / "cache"), "--out", str(out), *extra,
    ]  # fmt: skip


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def test_train_writes_its_files_and_prints_the_metrics(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cell"
    done = _run(_args(data_dir, out, "--epochs", "2", "--eval-batch-size", "7"))
    assert done.returncode == 0, done.stderr
    for name in ("result.json", "predictions.csv", "history.csv", "checkpoint.npz"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_run"] == 2 and result["config"]["eval_batch_size"] == 7
    assert "Epoch 1/2" in done.stdout and "Epoch 2/2" in done.stdout  # the progress bars
    assert f"{result['test']['accuracy']:.4f}" in done.stdout
    assert f"TN {result['test']['tn']}  FP {result['test']['fp']}" in done.stdout
    assert "epoch 2/2" in done.stderr  # the log line of each epoch


def test_backend_and_freeze_base_flags_reach_the_cell(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cell"
    done = _run(_args(data_dir, out, "--epochs", "1", "--backend", "jax", "--freeze-base"))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["backend"] == result["environment"]["backend"] == "jax"
    assert result["config"]["freeze_base"] is True and result["trainable_parameters"] == 65


def test_training_again_into_the_same_folder_needs_resume(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cell"
    assert _run(_args(data_dir, out, "--epochs", "1")).returncode == 0
    refused = _run(_args(data_dir, out, "--epochs", "1"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("lrstudy: error: ")
    assert "--resume" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_a_killed_cell_resumes_to_the_result_of_a_straight_run(
    data_dir: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    assert _run(_args(data_dir, straight, "--epochs", "4")).returncode == 0

    out = tmp_path / "killed"
    process = subprocess.Popen(
        _args(data_dir, out, "--epochs", "4"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.npz").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "result.json").exists(), "the run ended before it could be killed"

    resumed = _run(_args(data_dir, out, "--epochs", "4", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (out, straight))
    for result in (ours, theirs):
        for row in result["history"]:
            del row["seconds"]
    assert ours["history"] == theirs["history"]
    assert ours["test"] == theirs["test"] and ours["best"] == theirs["best"]
    assert (out / "predictions.csv").read_text() == (straight / "predictions.csv").read_text()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lr", "0"], ["--lr must be a number > 0", "0.0"]),
        (["--lr", "-0.01"], ["--lr", "-0.01"]),
        (["--image-size", "60", "--model", "inception_v3"], ["--image-size", ">= 75", "60"]),
        (["--model", "vgg16"], ["model", "'vgg16'"]),
        (["--optimizer", "adagrad"], ["optimizer", "'adagrad'"]),
        (["--epochs", "0"], ["epochs", "0"]),
        (["--test-weights", "first"], ["--test-weights", "'first'"]),
        (["--weights", "missing.h5"], ["weights", "'missing.h5'"]),
        (["--split", "random"], ["split", "'random'"]),
        (["--ratios", "0.5,0.5"], ["--ratios", "'0.5,0.5'"]),
        (["--backend", "torch"], ["--backend", '"tensorflow", "jax"', "'torch'"]),
        (["--patient-key", "id"], ["--patient-key", '"person-type", "person"', "'id'"]),
    ],
)
def test_bad_values_end_in_one_line_and_exit_code_2(
    data_dir: Path, tmp_path: Path, flags: list[str], words: list[str]
) -> None:
    done = _run([*_args(data_dir, tmp_path / "out"), *flags], timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrstudy: error: "), done.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_missing_data_folder_ends_in_one_line(tmp_path: Path) -> None:
    done = _run(_args(tmp_path / "no-such-folder", tmp_path / "out"), timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-folder" in lines[0], done.stderr


def test_imagenet_weights_offline_end_in_one_line_naming_weights_none(
    data_dir: Path, tmp_path: Path, closed_origin: str
) -> None:
    args = _args(data_dir, tmp_path / "out")
    args[args.index("--weights") + 1] = "imagenet"
    args[args.index("--model") + 1] = "inception_v3"
    args[args.index("--image-size") + 1] = "75"
    environment = {
        **os.environ,
        "KERAS_HOME": str(tmp_path),
        "HOME": str(tmp_path),
        "LRSTUDY_WEIGHTS_ORIGIN": closed_origin,  # the download is refused
    }
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 2
    *progress, line = done.stderr.strip().splitlines()
    assert [entry.split(" INFO ")[-1][:24] for entry in progress] == ["downloading the ImageNet"]
    assert line.startswith("lrstudy: error: ") and 'use weights "none"' in line, done.stderr


def test_skip_bad_trains_past_an_undecodable_image_that_stops_a_plain_run(
    make_dataset, tmp_path: Path
) -> None:
    written = make_dataset(corrupt=True)
    refused = _run(_args(written.root, tmp_path / "refused", "--epochs", "1"))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith("lrstudy: error: ") and written.corrupt[0] in lines[-1]
    assert "pass --skip-bad (data.skip_bad = true in a spec)" in lines[-1]
    out = tmp_path / "cell"
    done = _run(_args(written.root, out, "--epochs", "1", "--skip-bad"))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["data"]["skip_bad"] is True and result["epochs_run"] == 1
