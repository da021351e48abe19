"""The range test's figures (PNG and Plotly) from made-up curves, and their place on a study:
optuna-dashboard's figure beside the comparison figure, the files among the study's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from PIL import Image

from study.grid import create_grid_study, load_grid_study
from study.results import (
    FIGURE_ID,
    LR_FIND_FIGURE_ID,
    attach_lr_find,
    dashboard_artifact_store,
    lr_find_plotly,
    lr_find_png,
    refresh_views,
)
from tests.study.results.results_study import STUDY, build_study
from trainer import CellConfig, DataConfig, InputError, LrFindResult, LrFindRow, write_lr_find_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _result(smoothed: np.ndarray, stopped: str | None = None) -> LrFindResult:
    rates = np.geomspace(1e-6, 1.0, len(smoothed))
    config = CellConfig(
        data=DataConfig("unused"),
        learning_rate=1e-3,
        seed=3,
        out_dir="unused",
        model="small_cnn",
        weights="none",
        image_size=32,
    )
    rows = tuple(
        LrFindRow(step, float(rate), float(loss) + 0.05 * (-1) ** step, float(loss))
        for step, (rate, loss) in enumerate(zip(rates, smoothed, strict=True), start=1)
    )
    return LrFindResult(config, 1e-6, 1.0, len(rows), rows, stopped)


def _diverged() -> LrFindResult:
    """Steepest near 1e-3, lowest near 0.1, then a last batch 40 times the start: stopped."""
    x = np.log10(np.geomspace(1e-6, 1.0, 55))
    smoothed = 0.7 - 0.35 * np.tanh(2 * (x + 3)) + 2 * np.maximum(0, x + 1) ** 2
    smoothed[-1] = 28.0
    return _result(smoothed, "diverged")


def _traces(figure: dict) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for trace in figure["data"]:
        named.setdefault(trace["name"].split(" ")[0], []).append(trace)
    return named


def test_the_png_is_a_real_figure(tmp_path: Path) -> None:
    path = tmp_path / "lr_find.png"
    lr_find_png(_diverged(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (840, 540)  # 7 x 4.5 in at 120 dpi


def test_the_plotly_figure_marks_the_grid_the_steepest_point_and_the_stop() -> None:
    result = _diverged()
    figure = json.loads(lr_find_plotly(result).to_json())
    traces = _traces(figure)
    assert traces["loss"][0]["x"] == [row.learning_rate for row in result.rows]
    assert traces["smoothed"][0]["y"] == [row.smoothed_loss for row in result.rows]
    grid = result.suggested_grid()
    assert [trace["x"] for trace in traces["suggested"]] == [[rate, rate] for rate in grid]
    assert [trace["showlegend"] for trace in traces["suggested"]] == [True, False, False, False]
    (steepest,) = traces["steepest"]
    assert steepest["x"] == [result.steepest_lr]
    (stop,) = traces["stop"]
    assert stop["x"] == [result.divergence_lr] * 2
    assert figure["layout"]["xaxis"]["type"] == "log"
    # The stopped batch (28) is left out of the y range, so the curve keeps its height.
    top = 1.2 * max(row.smoothed_loss for row in result.curve)
    assert figure["layout"]["yaxis"]["range"] == pytest.approx([0, top])
    assert top < 28
    # A title that fits the dashboard's half-width card; the run in the line below it.
    assert figure["layout"]["title"]["text"] == "Learning-rate range test"
    (detail,) = [a["text"] for a in figure["layout"]["annotations"]]
    assert detail == "small_cnn, seed 3, stopped: diverged"


def test_a_curve_without_a_suggestion_is_drawn_with_only_its_curves(tmp_path: Path) -> None:
    never_falling = _result(np.linspace(0.7, 0.9, 30))
    with pytest.raises(InputError, match="never fell"):
        never_falling.suggested_grid()
    figure = json.loads(lr_find_plotly(never_falling).to_json())
    assert sorted(_traces(figure)) == ["loss", "smoothed"]
    lr_find_png(never_falling, tmp_path / "flat.png")
    assert (tmp_path / "flat.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_attached_curve_sits_beside_the_comparison_figure_through_refreshes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    build_study(url, tmp_path / "artifacts")
    study = load_grid_study(url, STUDY)
    refresh_views(study)
    result = _diverged()
    files = [tmp_path / "lr_find.csv", tmp_path / "lr_find.png"]
    write_lr_find_csv(result, files[0])
    lr_find_png(result, files[1])
    ids = attach_lr_find(study, result, files)
    refresh_views(study)

    attrs = study._storage.get_study_system_attrs(study._study_id)
    figures = get_plotly_graph_objects(attrs)
    # refresh_views rewrites its own figures (the comparison and others) and leaves this one.
    assert {FIGURE_ID, LR_FIND_FIGURE_ID} <= set(figures)
    assert json.loads(figures[LR_FIND_FIGURE_ID]) == json.loads(lr_find_plotly(result).to_json())

    # Stock Optuna lists the files and downloads them from the store `lrstudy dashboard` serves.
    fresh = optuna.load_study(study_name=STUDY, storage=url)
    metas = {meta.filename: meta for meta in get_all_artifact_meta(fresh)}
    assert sorted(metas) == ["lr_find-1.csv", "lr_find-1.png"]
    assert [metas["lr_find-1.csv"].artifact_id, metas["lr_find-1.png"].artifact_id] == ids
    assert metas["lr_find-1.png"].mimetype == "image/png"
    assert metas["lr_find-1.csv"].mimetype == "text/csv"
    store = dashboard_artifact_store(study._storage)
    for path, artifact_id in zip(files, ids, strict=True):
        copy = tmp_path / f"downloaded-{path.name}"
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(copy))
        assert copy.read_bytes() == path.read_bytes()

    # Another run replaces the figure and adds its files under the next number.
    write_lr_find_csv(_result(np.linspace(0.7, 0.9, 30)), files[0])
    attach_lr_find(study, _result(np.linspace(0.7, 0.9, 30)), files)
    figures = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert {FIGURE_ID, LR_FIND_FIGURE_ID} <= set(figures)
    (detail,) = json.loads(figures[LR_FIND_FIGURE_ID])["layout"]["annotations"]
    assert "stopped" not in detail["text"]
    metas = {meta.filename: meta for meta in get_all_artifact_meta(fresh)}
    assert sorted(metas) == ["lr_find-1.csv", "lr_find-1.png", "lr_find-2.csv", "lr_find-2.png"]
    with store.open_reader(metas["lr_find-1.csv"].artifact_id) as reader:
        first = reader.read()
    with store.open_reader(metas["lr_find-2.csv"].artifact_id) as reader:
        assert reader.read() == files[0].read_bytes() != first


def test_a_study_without_a_spec_needs_its_artifacts_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_grid_study(url, "bare", {"learning_rate": [0.1], "seed": [0]})
    study = load_grid_study(url, "bare")
    csv = tmp_path / "lr_find.csv"
    write_lr_find_csv(_diverged(), csv)
    with pytest.raises(InputError, match="pass --artifacts DIR"):
        attach_lr_find(study, _diverged(), [csv])
    (artifact_id,) = attach_lr_find(study, _diverged(), [csv], artifacts=str(tmp_path / "a"))
    store = dashboard_artifact_store(study._storage, str(tmp_path / "a"))
    with store.open_reader(artifact_id) as reader:
        assert reader.read() == csv.read_bytes()
