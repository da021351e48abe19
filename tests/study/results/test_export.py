"""``lrstudy export``: numbers recomputed here from stock Optuna, every format, figures, gaps."""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from scipy import stats

from study.results import collect, to_markdown
from study.spec import cell_key
from tests.study.results.results_study import (
    DIVERGED_CELL,
    LEARNING_RATES,
    SEEDS,
    STUDY,
    build_study,
)

ROOT = Path(__file__).resolve().parents[3]
CSV_COLUMNS = [
    "trial", "cell", "learning_rate", "seed", "state", "val_accuracy_last", "val_loss_last",
    "val_accuracy_best", "val_loss_best", "best_epoch", "test_accuracy", "test_precision",
    "test_recall", "test_specificity", "test_f1", "test_roc_auc", "epochs_run", "diverged",
    "duration_s", "worker_id", "host", "error",
]  # fmt: skip


def lrstudy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Storage URL of a finished 4 x 3 study (SQLite)."""
    folder = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{folder / 'study.db'}"
    build_study(url, folder / "artifacts")
    return url


def by_rate(study: optuna.Study, read) -> dict[float, list]:
    """``read(trial)`` of every COMPLETE trial, per learning rate, in seed order."""
    groups: dict[float, list] = defaultdict(list)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: t.params["seed"]):
        groups[trial.params["learning_rate"]].append(read(trial))
    return groups


def test_tables_and_sentence_match_numbers_recomputed_from_stock_optuna(
    storage_url: str, tmp_path: Path
) -> None:
    build_study(storage_url, tmp_path / "artifacts")
    done = lrstudy("export", "--storage", storage_url, "--study", STUDY, "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    markdown = lrstudy("export", "--storage", storage_url, "--study", STUDY).stdout

    study = optuna.load_study(study_name=STUDY, storage=storage_url)
    accuracy = by_rate(study, lambda t: t.user_attrs["final"]["val_accuracy"])
    loss = by_rate(study, lambda t: t.user_attrs["final"]["val_loss"])
    assert accuracy == by_rate(study, lambda t: t.value)  # the objective is the last epoch's
    groups = {g["params"]["learning_rate"]: g for g in summary["groups"]}
    assert sorted(groups) == sorted(LEARNING_RATES)
    for lr, values in accuracy.items():
        mean, sd = statistics.mean(values), statistics.stdev(values)
        half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
        got = groups[lr]["summaries"]["val_accuracy"]
        assert got["values"] == values
        assert got["mean"] == pytest.approx(mean)
        assert got["sd"] == pytest.approx(sd)
        assert got["ci95"] == pytest.approx([mean - half, mean + half])
        row = (
            f"| {lr:g} | "
            + " | ".join(f"{v:.4f}" + ("†" * (lr == 0.1 and s == 1)) for s, v in enumerate(values))
            + f" | {mean:.4f} | {sd:.4f} | [{mean - half:.4f}, {mean + half:.4f}] | 3 |"
        )
        assert row in markdown
    # The diverged seed has no loss: two values, one undefined, and the table says so.
    defined = [v for v in loss[0.1] if v is not None]
    assert len(defined) == 2
    assert groups[0.1]["summaries"]["val_loss"]["mean"] == pytest.approx(statistics.mean(defined))
    assert groups[0.1]["summaries"]["val_loss"]["undefined"] == 1
    assert "| 2 (1 undefined) |" in markdown

    # Test metrics (Table 6): mean ± SD over seeds.
    for name in ("accuracy", "precision", "recall", "specificity", "f1"):
        values = by_rate(study, lambda t, n=name: t.user_attrs["test"][n])[0.001]
        cell = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert cell in markdown.split("(Table 6)")[1].split("## Trials")[0]

    # The sentence: the best rate by mean against the runner-up, Welch's test.
    means = {lr: statistics.mean(v) for lr, v in accuracy.items()}
    best, runner_up = sorted(means, key=means.get, reverse=True)[:2]
    welch = stats.ttest_ind(accuracy[best], accuracy[runner_up], equal_var=False)
    comparison = summary["comparisons"]["val_accuracy"]
    assert comparison["best"] == f"learning rate {best:g}"
    assert comparison["runner_up"] == f"learning rate {runner_up:g}"
    assert comparison["p_value"] == pytest.approx(welch.pvalue)
    significant = bool(welch.pvalue < 0.05)
    assert comparison["significant"] is significant
    sentence = summary["headline"]
    assert sentence in markdown
    assert ("not statistically significant" in sentence) is (not significant)
    assert f"p = {welch.pvalue:.4f}" in sentence


def test_csv_is_one_flat_row_per_trial_with_stable_columns(finished: str) -> None:
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(rows[0]) == CSV_COLUMNS
    study = optuna.load_study(study_name=STUDY, storage=finished)
    trials = {t.number: t for t in study.trials}
    assert sorted(int(r["trial"]) for r in rows) == sorted(trials)
    for row in rows:
        trial = trials[int(row["trial"])]
        attrs = trial.user_attrs
        assert float(row["learning_rate"]) == trial.params["learning_rate"]
        assert int(row["seed"]) == trial.params["seed"]
        assert row["state"] == "COMPLETE"
        assert float(row["val_accuracy_last"]) == attrs["final"]["val_accuracy"]
        assert float(row["val_accuracy_best"]) == attrs["best"]["val_accuracy"]
        assert int(row["best_epoch"]) == attrs["best"]["epoch"]
        assert float(row["test_specificity"]) == attrs["test"]["specificity"]
        assert row["worker_id"] == "w0" and row["host"] == socket.gethostname()
        assert float(row["duration_s"]) == pytest.approx(trial.duration.total_seconds())
        if row["cell"] == DIVERGED_CELL:
            assert (row["diverged"], row["val_loss_last"], row["test_roc_auc"]) == ("True", "", "")
        else:
            assert row["diverged"] == "False"
            assert float(row["val_loss_last"]) == attrs["final"]["val_loss"]
            assert float(row["test_roc_auc"]) == attrs["test"]["roc_auc"]


def test_json_carries_histories_and_every_group(finished: str) -> None:
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--format", "json")
    summary = json.loads(done.stdout)
    study = optuna.load_study(study_name=STUDY, storage=finished)
    assert (summary["cells"], summary["complete"], summary["missing"]) == (12, 12, [])
    assert summary["spec"]["train"]["model"] == "inception_v3"
    records = {record["trial"]: record for record in summary["trials"]}
    for trial in study.trials:
        record = records[trial.number]
        assert record["history"] == trial.user_attrs["history"]
        assert record["test"]["tp"] == trial.user_attrs["test"]["tp"]
        assert record["intermediate_values"] == {
            str(step): value for step, value in trial.intermediate_values.items()
        }
    seeds = [[entry["seed"] for entry in g["per_seed"]["val_accuracy"]] for g in summary["groups"]]
    assert seeds == [SEEDS] * 4
    assert [g["diverged_seeds"] for g in summary["groups"]] == [[1], [], [], []]


def test_out_writes_tables_and_nonempty_figures(finished: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    names = {"trials.csv", "summary.json", "summary.md", "val_accuracy.png", "val_loss.png",
             "roc.png"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == names
    assert sorted(Path(line).name for line in done.stdout.split()) == sorted(names)
    for name in ("val_accuracy.png", "val_loss.png", "roc.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"))
        assert min(pixels.shape) > 300
        assert len(np.unique(pixels)) > 20  # drawn lines and bands, not a blank canvas
    assert (out / "trials.csv").read_text() == lrstudy(
        "export", "--storage", finished, "--study", STUDY, "--format", "csv"
    ).stdout
    markdown = (out / "summary.md").read_text()
    assert "![val accuracy](val_accuracy.png)" in markdown
    # The diverged trial's predictions are NaN: said, and left out of the ROC curves.
    assert f"trial 1 ({DIVERGED_CELL}): predictions hold NaN" in markdown
    assert "predictions hold NaN" in done.stderr


def test_a_partial_study_exports_what_is_complete_and_names_the_rest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # The first cell a worker takes fails for good, six complete, then the worker stops; one
    # more cell is taken by a client that is still running it.
    study = build_study(url, tmp_path / "artifacts", failing_calls=(1,), stop_after=7)
    running = study.ask()
    trials = optuna.load_study(study_name=STUDY, storage=url).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    (failed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    broken = cell_key(failed.params)
    # A predictions file that went missing (another machine's disk) is skipped with a note.
    gone = complete[0].user_attrs["predictions_path"]
    Path(gone).unlink()

    out = tmp_path / "out"
    done = lrstudy("export", "--storage", url, "--study", STUDY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    states = {m["cell"]: m["state"] for m in summary["missing"]}
    assert summary["complete"] == len(complete) == 6
    assert states.pop(broken) == "failed"
    assert list(states.values()).count("running") == 1
    assert list(states.values()).count("waiting") == 12 - 6 - 1 - 1
    assert f"{broken} (failed)" in done.stderr
    markdown = (out / "summary.md").read_text()
    assert "6 of 12 cells complete" in markdown
    assert (
        f"- `{broken}`: failed (trial {failed.number}): RuntimeError: ResourceExhaustedError"
        in markdown
    )
    assert f"(trial {running.number})" in markdown
    table4 = markdown.split("(Table 4)")[1].split("(Table 5)")[0]
    assert table4.count("| missing") == 6
    for group in summary["groups"]:
        seeds = group["per_seed"]["val_accuracy"]
        assert group["summaries"]["val_accuracy"]["n"] == sum(
            e["value"] is not None for e in seeds
        )
    record = next(r for r in summary["trials"] if r["trial"] == complete[0].number)
    assert f"trial {record['trial']} ({record['cell']}): predictions file {gone} not found" in (
        markdown
    )
    assert (out / "roc.png").stat().st_size > 0
    # Per-trial rows: the failed trial with its error, the running and the waiting ones.
    rows = list(csv.DictReader(io.StringIO((out / "trials.csv").read_text())))
    assert [r["cell"] for r in rows if r["state"] == "FAIL"] == [broken]
    assert "ResourceExhaustedError" in next(r["error"] for r in rows if r["state"] == "FAIL")
    assert sum(r["state"] == "WAITING" for r in rows) == 4
    assert sum(r["state"] == "RUNNING" for r in rows) == 1


def test_reduce_best_puts_the_best_epochs_values_in_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = build_study(url, tmp_path / "artifacts", reduce="best")
    results = collect(study)
    best = by_rate(study, lambda t: t.user_attrs["best"]["val_accuracy"])
    for group in results.groups:
        values = best[group.params["learning_rate"]]
        assert group.summaries["val_accuracy"].mean == pytest.approx(statistics.mean(values))
    assert "Values per seed are the best epoch's" in to_markdown(results)


def test_bad_input_is_one_line_and_exit_2(finished: str, tmp_path: Path) -> None:
    done = lrstudy("export", "--storage", finished, "--study", "nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"lrstudy: error: study 'nope' not found in {finished}; create it with `lrstudy create`"
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--out", str(blocker))
    assert done.returncode == 2
    assert done.stderr.startswith(f"lrstudy: error: --out '{blocker}' cannot be made a folder")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_study_trained_by_the_real_objective_exports_like_the_paper(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    overrides = {
        "train.model": "small_cnn", "train.weights": "none", "train.image_size": 32,
        "train.epochs": 2, "train.eval_batch_size": 32, "data.split": "kaggle",
        "data.limit_per_class": 6, "data.cache_dir": cache_dir, "study.name": "real",
        "study.artifacts": str(tmp_path / "artifacts"),
    }  # fmt: skip
    sets: list[str] = []
    for key, value in overrides.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    run = subprocess.run(
        [sys.executable, "-m", "study", "run", "--storage", url, "--data", str(dataset_dir),
         "--workers", "2", *sets],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    done = lrstudy("export", "--storage", url, "--study", "real", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    study = optuna.load_study(study_name="real", storage=url)
    accuracy = by_rate(study, lambda t: t.value)
    for group in summary["groups"]:
        values = accuracy[group["params"]["learning_rate"]]
        assert group["summaries"]["val_accuracy"]["mean"] == pytest.approx(statistics.mean(values))
        assert group["summaries"]["val_accuracy"]["sd"] == pytest.approx(statistics.stdev(values))
        records = [r for r in summary["trials"] if r["trial"] in group["trials"]]
        assert [len(r["history"]["val_loss"]) for r in records] == [2, 2, 2]
    assert summary["complete"] == 12 and summary["headline"].startswith("learning rate ")
    assert "Welch" in summary["headline"] or "no test is possible" in summary["headline"]
    # The real predictions files feed the ROC figure: none is reported missing.
    assert "not found" not in done.stderr
    assert (out / "roc.png").is_file() or "no ROC curve" in done.stderr
