"""``lrstudy lr-find`` as a user runs it (subprocesses), on small images whose loss can diverge;
its curve attached to a study as stock Optuna and optuna-dashboard's app read it. Inception V3
goes through the same ``find_learning_rate`` in tests/trainer/test_lr_find.py, on both backends."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
import optuna
import optuna_dashboard
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta

from storage import open_storage
from study.cli import main
from study.grid import create_from_spec
from study.results import FIGURE_ID, LR_FIND_FIGURE_ID, dashboard_artifact_store, refresh_views
from study.spec import load_preset
from tests.conftest import write_dataset

ROOT = Path(__file__).resolve().parents[3]
RANGE = ["--min", "1e-4", "--max", "10", "--steps", "100"]
STUDY = "kim-ye-2022-quick"  # the quick preset's name


def lrstudy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class Setup:
    root: Path
    spec: list[str]  # --preset quick --data DIR --set ... pointing at the test's files
    url: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """80 training images of 32 px, 2 per class with the other class's label (on clean images
    the small CNN's loss reaches 0 and no rate diverges), and an empty quick study."""
    root = tmp_path_factory.mktemp("lr_find_cli")
    data = root / "data"
    write_dataset(data, parts={"train": (40, 40), "val": (2, 2), "test": (2, 2)})
    flips = [
        (path, other)
        for label, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL"))
        for path in sorted((data / "train" / label).iterdir())[:2]
    ]
    for path, other in flips:
        shutil.move(path, data / "train" / other / path.name)
    overrides = [
        "train.image_size=32",
        'data.split="kaggle"',
        f"data.cache_dir={root / 'cache'}",
        f"study.artifacts={root / 'artifacts'}",
    ]
    url = f"sqlite:///{root / 'study.db'}"
    spec = load_preset("quick", overrides).with_locations(storage=url, data_root=str(data))
    create_from_spec(open_storage(url), spec.resolved())
    flags = ["--preset", "quick", "--data", str(data)]
    return Setup(root, [*flags, *(part for text in overrides for part in ("--set", text))], url)


@pytest.fixture(scope="module")
def attached(setup: Setup) -> subprocess.CompletedProcess[str]:
    """One run, attached to the study."""
    out = setup.root / "attached"
    return lrstudy(
        "lr-find", *setup.spec, *RANGE, "--out", str(out), "--storage", setup.url, "--study", STUDY
    )


def _error_line(stderr: str) -> str:
    """The one error line; TensorFlow may log a line of its own after it as the process ends."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("lrstudy: error:")]
    return line


def _grid(stdout: str) -> list[float]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("next: lrstudy run")]
    assert line.endswith("]'")
    return json.loads(line.rsplit("--set 'grid.learning_rate=", 1)[1].rstrip("'"))


def test_the_summary_names_the_rates_and_the_grid_lies_below_the_divergence(
    setup: Setup, attached: subprocess.CompletedProcess[str]
) -> None:
    assert attached.returncode == 0, attached.stderr[-2000:]
    out = setup.root / "attached"
    lines = attached.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("lr-find small_cnn")))
    assert lines[summary].startswith(
        "lr-find small_cnn, 32 px, batch 8, adam, tensorflow, seed 0: 100 steps"
    )
    assert [line.split()[0] for line in lines[summary + 1 : summary + 5]] == [
        "steepest", "lowest", "divergence", "suggested",
    ]  # fmt: skip
    assert f"wrote {out / 'lr_find.csv'} and {out / 'lr_find.png'}" in lines
    next_line = lines[-1]
    assert next_line.startswith(f"next: lrstudy run --preset quick --data {setup.spec[3]} --set")
    # The attached study keeps its grid: the suggestion runs as a study of its own.
    assert f"--set study.name={STUDY}-suggested --set 'grid.learning_rate=[" in next_line

    with open(out / "lr_find.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["step", "learning_rate", "loss", "smoothed_loss"]
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates == pytest.approx(np.geomspace(1e-4, 10, 100)[: len(rows)].tolist())
    # The wrong labels keep the loss from reaching 0: rates up to 10 make it diverge.
    assert len(rows) < 100 and lines[summary].endswith(f"stopped (diverged) at step {len(rows)}")
    assert lines[summary + 3].split()[1] == f"{rates[-1]:.3g}"
    smoothed = [float(row["smoothed_loss"]) for row in rows]
    lowest = rates[int(np.argmin(smoothed[:-1]))]
    grid = _grid(attached.stdout)
    assert len(grid) == 4 and grid == sorted(grid, reverse=True)
    assert all(1e-4 <= rate < lowest < rates[-1] for rate in grid)
    assert lines[summary + 4].split(None, 2)[2] == ", ".join(f"{rate:g}" for rate in grid)


def test_the_same_seed_gives_the_same_csv_bytes_in_the_default_folder(
    setup: Setup, attached: subprocess.CompletedProcess[str]
) -> None:
    again = lrstudy("lr-find", *setup.spec, *RANGE)
    assert again.returncode == 0, again.stderr[-2000:]
    default = setup.root / "artifacts" / "lr-find" / f"{STUDY}-seed0"
    first = (setup.root / "attached" / "lr_find.csv").read_bytes()
    assert (default / "lr_find.csv").read_bytes() == first
    assert _grid(again.stdout) == _grid(attached.stdout)
    assert "study.name=" not in again.stdout  # not attached: the spec's own study takes it
    png = (default / "lr_find.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def test_stock_optuna_lists_and_downloads_the_attached_files(
    setup: Setup, attached: subprocess.CompletedProcess[str]
) -> None:
    assert attached.returncode == 0, attached.stderr[-2000:]
    assert (
        f"attached to study {STUDY!r}: the figure on its dashboard page, lr_find-1.csv and "
        "lr_find-1.png among its artifacts"
    ) in attached.stdout
    study = optuna.load_study(study_name=STUDY, storage=setup.url)
    metas = {meta.filename: meta for meta in get_all_artifact_meta(study)}
    assert sorted(metas) == ["lr_find-1.csv", "lr_find-1.png"]
    store = dashboard_artifact_store(open_storage(setup.url))
    copy = setup.root / "downloaded.csv"
    download_artifact(
        artifact_store=store, artifact_id=metas["lr_find-1.csv"].artifact_id, file_path=str(copy)
    )
    assert copy.read_bytes() == (setup.root / "attached" / "lr_find.csv").read_bytes()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dashboard(setup: Setup) -> Iterator[str]:
    """optuna-dashboard's app over the study's storage and artifact stores, as ``lrstudy
    dashboard`` serves it, on a free local port; yields its base URL."""
    storage = open_storage(setup.url)
    app = optuna_dashboard.wsgi(storage, artifact_store=dashboard_artifact_store(storage))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def test_the_dashboard_serves_the_curve_beside_the_refreshed_comparison_figure(
    setup: Setup, attached: subprocess.CompletedProcess[str], dashboard: str
) -> None:
    assert attached.returncode == 0, attached.stderr[-2000:]
    study = optuna.load_study(study_name=STUDY, storage=setup.url)
    refresh_views(study)  # as each worker does after a trial
    with urllib.request.urlopen(f"{dashboard}/api/studies/{study._study_id}") as response:
        detail = json.load(response)
    figures = {
        item["id"]: json.loads(item["graph_object"]) for item in detail["plotly_graph_objects"]
    }
    assert {FIGURE_ID, LR_FIND_FIGURE_ID} <= set(figures)
    figure = figures[LR_FIND_FIGURE_ID]["layout"]
    assert figure["title"]["text"] == "Learning-rate range test"
    assert figure["annotations"][0]["text"].startswith("small_cnn, seed 0")
    (png,) = [m for m in get_all_artifact_meta(study) if m.filename == "lr_find-1.png"]
    with urllib.request.urlopen(f"{dashboard}/artifacts/{study._study_id}/{png.artifact_id}") as r:
        assert r.headers["Content-Type"] == "image/png"
        assert r.read() == (setup.root / "attached" / "lr_find.png").read_bytes()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--min", "0.1", "--max", "0.01"], "--min (0.1) must be below --max (0.01)"),
        (["--min", "0"], "--min must be a finite learning rate > 0"),
        (["--max", "inf"], "--max must be a finite learning rate > 0"),
        (["--steps", "5"], "--steps must be an integer >= 10"),
        (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["--storage", "sqlite:///elsewhere.db"], "pass --study NAME"),
        (["--study", "nowhere"], "study 'nowhere' not found"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2_before_any_training(
    setup: Setup,
    options: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In-process, as each of these answers before Keras loads; the command sets KERAS_BACKEND
    # to the spec's, and monkeypatch puts it back afterwards.
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("LRSTUDY_STORAGE", setup.url)
    try:
        code = main(["lr-find", *setup.spec, *options])
    except SystemExit as error:  # argparse's own errors
        code = error.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and err.startswith("lrstudy: error:")


def test_what_the_test_trains_is_said_before_it_starts(
    setup: Setup,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    caplog.set_level(logging.INFO)
    other = ["--set", "train.image_size=40", "--set", "grid.batch_size=[8, 16]"]
    options = ["--storage", setup.url, "--study", STUDY, "--min", "0"]  # stops after the notes
    assert main(["lr-find", *setup.spec, *other, *options]) == 2
    assert "--min must be" in capsys.readouterr().err
    notes = [record.getMessage() for record in caplog.records]
    assert "lr-find: grid.batch_size has 2 values; the test uses the first, 8" in notes
    (warning,) = [note for note in notes if "trains another cell" in note]
    assert "train.image_size (stored 32, given 40)" in warning
    assert "batch_size" not in warning  # the grid is not the cell


def test_a_curve_without_a_descent_writes_its_files_and_says_what_to_change(
    setup: Setup, tmp_path: Path
) -> None:
    done = lrstudy("lr-find", *setup.spec, "--min", "1e3", "--max", "1e20", "--steps", "10",
                   "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "  suggested grid    none (see below)" in done.stdout.splitlines()
    error = _error_line(done.stderr)
    assert error.startswith("lrstudy: error: lr-find: the loss diverged after ")
    assert error.endswith("; lower --min (now 1000)")
    assert (tmp_path / "lr_find.csv").is_file() and (tmp_path / "lr_find.png").is_file()


def test_the_jax_backend_runs_the_same_command(
    setup: Setup, attached: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    done = lrstudy("lr-find", *setup.spec, *RANGE, "--backend", "jax", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert ", adam, jax, seed 0: 100 steps" in done.stdout
    assert "--set train.backend=jax --set 'grid.learning_rate=[" in done.stdout.splitlines()[-1]
    with open(tmp_path / "lr_find.csv") as file:
        rows = list(csv.DictReader(file))
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates == pytest.approx(np.geomspace(1e-4, 10, 100)[: len(rows)].tolist())
    assert all(1e-4 <= rate < rates[-1] for rate in _grid(done.stdout))
    # Other kernels, other last digits: had TensorFlow run again, the bytes would be equal.
    tensorflow = (setup.root / "attached" / "lr_find.csv").read_bytes()
    assert (tmp_path / "lr_find.csv").read_bytes() != tensorflow


def test_a_keras_backend_other_than_the_specs_is_refused(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert main(["lr-find", *setup.spec]) == 2
    assert capsys.readouterr().err == (
        "lrstudy: error: KERAS_BACKEND=jax conflicts with train.backend = 'tensorflow' of the "
        "spec; pass --backend jax, or unset KERAS_BACKEND\n"
    )
