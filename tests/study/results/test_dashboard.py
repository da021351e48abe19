"""optuna-dashboard views of a study: flat attributes, artifacts, the comparison figure, the note,
and the real dashboard app in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import scipy.stats
from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from study.grid import ARTIFACT_FOLDER, load_grid_study, study_folder, study_uid
from study.results import FIGURE_ID, TEST_FIGURE_ID, attach_lr_find, refresh_views
from tests.study.results.results_study import DIVERGED_CELL, LEARNING_RATES, STUDY, build_study
from tests.study.results.test_lr_find_figure import _diverged
from tests.waiting import serve_on_a_free_port

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LABELS = [f"lr {lr:g}" for lr in LEARNING_RATES]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A finished 4 x 3 study (SQLite) whose views were never refreshed, and its artifacts."""
    folder = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{folder / 'study.db'}"
    build_study(url, folder / "artifacts")
    return url, folder / "artifacts"


def stored_figure(study: optuna.Study, figure_id: str = FIGURE_ID) -> dict:
    figures = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert sorted(figures) == sorted([FIGURE_ID, TEST_FIGURE_ID])
    return json.loads(figures[figure_id])


def key_line(figure: dict) -> str:
    """The line under the title that says the state of the grid and how to read the figure."""
    (key,) = [a["text"] for a in figure["layout"]["annotations"] if "cells" in a["text"]]
    return key


def test_each_trial_has_flat_metrics_and_its_files_as_artifacts(finished) -> None:
    url, artifacts = finished
    folder = study_folder(artifacts, STUDY, study_uid(load_grid_study(url, STUDY)))
    store = FileSystemArtifactStore(str(folder / ARTIFACT_FOLDER))
    for trial in optuna.load_study(study_name=STUDY, storage=url).trials:
        attrs = trial.user_attrs
        assert attrs["val_loss"] == attrs["final"]["val_loss"]
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc"):
            assert attrs[f"test_{name}"] == attrs["test"][name]
        metas = [
            json.loads(value)
            for key, value in trial.system_attrs.items()
            if key.startswith("artifacts:")
        ]
        files = {meta["filename"]: meta["artifact_id"] for meta in metas}
        assert sorted(files) == [
            "history.csv", "predictions.csv", "result.json", "val_predictions.csv"
        ]  # fmt: skip
        for name, artifact_id in files.items():
            with store.open_reader(artifact_id) as reader:
                assert reader.read() == (Path(attrs["out_dir"]) / name).read_bytes()
    diverged = [t for t in optuna.load_study(study_name=STUDY, storage=url).trials
                if t.user_attrs["cell"] == DIVERGED_CELL]  # fmt: skip
    assert diverged[0].user_attrs["val_loss"] is None


def test_the_figure_shows_each_seed_the_mean_and_its_95_interval(finished) -> None:
    url, _ = finished
    study = load_grid_study(url, STUDY)
    refresh_views(study)
    refresh_views(study)  # rewriting keeps one figure per id, not a second copy
    figure = stored_figure(study)
    lines = [trace for trace in figure["data"] if trace.get("mode") == "lines+markers"]
    assert sorted({t["name"] for t in lines}) == sorted(LABELS)
    assert [t["name"] for t in lines if t["showlegend"]] == LABELS
    # A title that fits a half-width card; the grid's state and the key on the line below.
    assert len(figure["layout"]["title"]["text"]) <= 40
    assert key_line(figure).startswith("12/12 cells") and "95% t-interval" in key_line(figure)
    # The diverged seed's NaN loss leaves lr 0.1's mean from its epoch on: the key says so.
    assert key_line(figure).endswith(" · loss of lr 0.1 (n = 2 of 3 from epoch 3)")
    # Recompute epoch means and Student-t 95% intervals of one rate from stock Optuna.
    trials = [
        t for t in optuna.load_study(study_name=STUDY, storage=url).trials
        if t.params["learning_rate"] == 0.001
    ]  # fmt: skip
    t975 = scipy.stats.t.ppf(0.975, df=len(trials) - 1)
    for metric, axis in (("val_accuracy", "x"), ("val_loss", "x2")):
        per_seed = [t.user_attrs["history"][metric] for t in trials]
        per_epoch = list(zip(*per_seed, strict=True))
        means = [statistics.mean(values) for values in per_epoch]
        halves = [t975 * statistics.stdev(v) / len(v) ** 0.5 for v in per_epoch]
        (line,) = [t for t in lines if t["name"] == LABELS[2] and t["xaxis"] == axis]
        assert line["x"] == list(range(1, len(means) + 1))
        assert line["y"] == pytest.approx(means)
        group = [t for t in figure["data"] if t.get("legendgroup") == line["legendgroup"]]
        seeds = [
            t["y"] for t in group
            if t.get("mode") == "lines" and "fill" not in t and t["xaxis"] == axis
        ]  # fmt: skip
        assert sorted(seeds) == sorted(per_seed)  # each seed's own curve, behind the mean
        (band,) = [t for t in group if t.get("fill") == "toself" and t["xaxis"] == axis]
        upper = band["y"][: len(means)]
        assert upper == pytest.approx([m + h for m, h in zip(means, halves, strict=True)])


def test_the_test_figure_has_a_point_per_seed_and_an_interval_per_rate(finished) -> None:
    url, _ = finished
    study = load_grid_study(url, STUDY)
    refresh_views(study)
    figure = stored_figure(study, TEST_FIGURE_ID)
    trials = optuna.load_study(study_name=STUDY, storage=url).trials
    accuracy = [t for t in figure["data"] if t["xaxis"] == "x"]
    points = [t for t in accuracy if t["marker"]["size"] == 7]
    assert [t["x"][0] for t in points] == [f"{lr:g}" for lr in LEARNING_RATES]
    for trace, lr in zip(points, LEARNING_RATES, strict=True):
        expected = [t.user_attrs["test"]["accuracy"] for t in trials
                    if t.params["learning_rate"] == lr and t.state.name == "COMPLETE"]  # fmt: skip
        assert sorted(trace["y"]) == pytest.approx(sorted(expected))
        (mean,) = [t for t in accuracy if t["marker"]["size"] == 12 and t["x"] == trace["x"][:1]]
        assert mean["y"][0] == pytest.approx(statistics.mean(expected))


def test_the_note_has_protocol_tables_and_the_plain_sentence(finished) -> None:
    url, _ = finished
    study = load_grid_study(url, STUDY)
    results = refresh_views(study)
    note = get_note(study)
    protocol = (
        "**Protocol:** inception_v3 (imagenet weights, fine-tuned), 224 px, 4 epochs, batch 8"
    )
    assert protocol in note and ", adam, Keras on tensorflow; data split" in note
    # The key table's marks and numbers are explained under it, before the rest of the page.
    reading = note.index("## Reading this page")
    assert note.index("0.0000†") < note.index("† diverged (a real outcome") < reading
    assert note.index("Values per seed are the last epoch's; SD is the sample SD") < reading
    assert "12 of 12 cells complete" in note
    assert results.headline() in note and "paired t-tests over seeds, Holm-corrected" in note
    for title in ("(Table 4)", "(Table 5)", "(Table 6)", "## Paired comparisons"):
        assert title in note
    # "the paired tests below": every pair of the four rates, over seeds, for each metric.
    over_seeds = note.split("### Over seeds", 1)[1].split("\n### ", 1)[0]
    assert over_seeds.count("| lr ") + over_seeds.count("| learning rate ") >= 6


def test_views_of_a_running_study_say_what_is_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = build_study(url, tmp_path / "artifacts", stop_after=5)
    results = refresh_views(load_grid_study(url, STUDY))
    assert results.complete == 5
    assert key_line(stored_figure(study)).startswith("5/12 cells")
    note = get_note(study)
    assert "not yet in the tables:" in note
    assert note.count("(waiting)") == 7


def lrstudy_dashboard(url: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "study", "dashboard", "--storage", url, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_port_in_use_is_one_line_and_exit_2(finished) -> None:
    url, _ = finished
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = lrstudy_dashboard(url, port)
        _, stderr = server.communicate(timeout=120)
    assert server.returncode == 2
    assert stderr.strip().splitlines()[-1] == (
        f"lrstudy: error: --port {port} is already in use on 127.0.0.1; pass another port, "
        f"e.g. --port {port + 1}, or stop what listens there"
    )
    assert "Traceback" not in stderr


@pytest.fixture
def served(finished) -> Iterator[tuple[str, int]]:
    """``lrstudy dashboard`` for the finished study; yields its base URL and the study id."""
    url, _ = finished
    server, port = serve_on_a_free_port(
        lambda port: lrstudy_dashboard(url, port), _answers, what="lrstudy dashboard to answer"
    )
    try:
        study_id = optuna.load_study(study_name=STUDY, storage=url)._study_id
        yield f"http://127.0.0.1:{port}", study_id
    finally:
        server.terminate()
        server.communicate(timeout=30)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/meta", timeout=5) as response:
            assert json.load(response)["artifact_is_available"] is True
    except OSError:
        return False
    return True


def chromium_or_skip():
    """Playwright's sync API, or a skip (a failure under CI=true) saying what is missing."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("Playwright for Python (pip install playwright)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the browser test must not be skipped)")
        pytest.skip(reason)
    return sync_playwright


# Each Plotly figure on the page: its title text's box and the plot's box, in page pixels.
FIGURE_TITLE_BOXES = """
() => [...document.querySelectorAll('.js-plotly-plot')].map((plot) => {
  const title = plot.querySelector('.gtitle');
  const main = plot.querySelector('svg.main-svg');
  if (!title || !main) return null;
  const t = title.getBoundingClientRect(), p = main.getBoundingClientRect();
  return {text: title.textContent, title_left: t.left, title_right: t.right,
          plot_left: p.left, plot_right: p.right};
}).filter((box) => box !== null)
"""


def test_the_dashboard_shows_12_trials_the_figure_and_the_note(
    finished, served: tuple[str, int], tmp_path: Path
) -> None:
    sync_playwright = chromium_or_skip()
    base, study_id = served
    # The study page also shows a range-test curve, as after `lrstudy lr-find --study`.
    attach_lr_find(load_grid_study(finished[0], STUDY), _diverged(), [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # Chromium and the app share two loaded cores
            page.goto(f"{base}/dashboard/studies/{study_id}/trials")
            page.get_by_text("12 Trials").wait_for(timeout=60_000)
            entries = page.get_by_text(re.compile(r"^Trial \d+$"))
            assert sorted(entries.all_inner_texts()) == sorted(f"Trial {n}" for n in range(12))
            # The selected trial shows its flat metrics and its artifacts.
            page.get_by_text("test_roc_auc").first.wait_for()
            page.get_by_text("predictions.csv").first.wait_for()
            # The artifact viewer opens a CSV artifact as a table of its columns.
            page.get_by_role("button", name="show artifact table").first.click()
            header = page.get_by_role("columnheader", name=re.compile(r"^(probability|val_loss)"))
            header.first.wait_for(timeout=30_000)
            page.keyboard.press("Escape")

            page.goto(f"{base}/dashboard/studies/{study_id}")
            titles = (
                "Learning rates: validation curves",
                "Learning rates: test metrics",
                "Learning-rate range test",
            )
            for title in titles:
                page.get_by_text(title, exact=True).wait_for(timeout=60_000)
            for label in LABELS:
                page.get_by_text(label, exact=True).first.wait_for()
            # Every figure's title lies wholly inside its plot, so nothing of it is cut.
            boxes = page.evaluate(FIGURE_TITLE_BOXES)
            assert sorted(box["text"] for box in boxes) == sorted(titles)
            for box in boxes:
                assert box["title_right"] <= box["plot_right"] + 0.5, box
                assert box["title_left"] >= box["plot_left"] - 0.5, box
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            if os.environ.get("LRSTUDY_README_SCREENSHOT"):
                (ROOT / "docs" / "img" / "dashboard.png").write_bytes(shot.read_bytes())

            page.goto(f"{base}/dashboard/studies/{study_id}/note")
            page.get_by_text("Validation accuracy (Table 4)").wait_for(timeout=60_000)
            page.get_by_text("Reading this page").wait_for()
            result = page.get_by_text(re.compile(r"has the highest mean validation accuracy"))
            result.first.wait_for()
            assert "Holm-corrected" in result.first.inner_text()
            page.screenshot(path=str(tmp_path / "note.png"), full_page=True)
        finally:
            browser.close()
