"""``lrstudy export``: numbers recomputed here from stock Optuna and the prediction files, every
format, figures, gaps, and a study whose database and artifacts moved."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from scipy import stats
from statsmodels.stats.multitest import multipletests

from study.grid import ARTIFACT_FOLDER, study_folder, study_uid
from study.results import collect, to_markdown
from study.results._bootstrap import bootstrap_intervals
from study.results._calibration import youden
from study.results._delong import delong_test
from study.results._paired import seeds_needed
from study.spec import cell_key
from tests.study.results.results_study import (
    COLLAPSED_CELL,
    DIVERGED_CELL,
    IMAGES,
    LEARNING_RATES,
    SEEDS,
    STUDY,
    build_study,
)
from trainer import patient_id

ROOT = Path(__file__).resolve().parents[3]
CSV_COLUMNS = [
    "trial", "cell", "learning_rate", "seed", "state", "val_accuracy_last", "val_loss_last",
    "val_accuracy_best", "val_loss_best", "best_epoch", "test_accuracy", "test_precision",
    "test_recall", "test_specificity", "test_f1", "test_roc_auc", "test_brier", "epochs_run",
    "diverged", "collapsed", "duration_s", "worker_id", "host", "error",
]  # fmt: skip
LABELS = [f"learning rate {lr:g}" for lr in LEARNING_RATES]


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


def predictions(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, labels and probabilities of a predictions CSV, read here with csv alone."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    return [r["path"] for r in rows], labels, np.array([float(r["probability"]) for r in rows])


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
    # lr 0.1's interval, over a diverged seed's 0, runs past [0, 1], as three seeds allow.
    beyond = [lr for lr, g in groups.items() if g["summaries"]["val_accuracy"]["ci95"][0] < 0]
    assert beyond == [0.1]
    assert (
        "The 95% CI of learning rate 0.1 runs outside [0, 1], where accuracies lie"
        in markdown.split("(Table 4)")[1].split("(Table 5)")[0]
    )
    assert "where no loss lies" not in markdown
    # The diverged seed has no loss: two values, one left out, and the table says why.
    defined = [v for v in loss[0.1] if v is not None]
    assert len(defined) == 2
    assert groups[0.1]["summaries"]["val_loss"]["mean"] == pytest.approx(statistics.mean(defined))
    assert groups[0.1]["summaries"]["val_loss"]["undefined"] == 1
    assert groups[0.1]["summaries"]["val_loss"]["diverged"] == 1
    assert "| 2 (1 of 3 diverged) |" in markdown.split("(Table 5)")[1].split("(Table 6)")[0]
    # What was trained, before the tables: the paper's open choices among it.
    protocol = markdown.split("**Result.**")[0]
    assert "**Protocol:** inception_v3 (imagenet weights, fine-tuned), 224 px" in protocol
    assert "Keras on tensorflow" in protocol and "**Grid:** learning_rate [0.1," in protocol
    # Every other summary counts every complete seed; what is left out is a diverged seed's.
    for group in summary["groups"]:
        for name, s in group["summaries"].items():
            assert s["n"] + s["undefined"] == 3, name
            assert s["undefined"] == s["diverged"], name

    # Test metrics (Table 6): mean ± SD over seeds.
    for name in ("accuracy", "precision", "recall", "specificity", "f1"):
        values = by_rate(study, lambda t, n=name: t.user_attrs["test"][n])[0.001]
        cell = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert cell in markdown.split("(Table 6)")[1].split("## Trials")[0]

    # The sentence: the best mean, and only the gaps paired t-tests over seeds support after
    # Holm's correction over the six pairs.
    pairs = [(a, b) for i, a in enumerate(LEARNING_RATES) for b in LEARNING_RATES[i + 1 :]]
    p = [stats.ttest_rel(accuracy[a], accuracy[b]).pvalue for a, b in pairs]
    p_holm = dict(zip(pairs, multipletests(p, method="holm")[1], strict=True))
    means = {lr: statistics.mean(v) for lr, v in accuracy.items()}
    best = max(means, key=means.get)
    ranking = summary["rankings"]["val_accuracy"]
    assert ranking["leader"] == f"learning rate {best:g}"
    sentence = summary["headline"]
    assert sentence == ranking["sentence"] and sentence in markdown
    assert "Welch" not in markdown
    for other in LEARNING_RATES:
        if other == best:
            continue
        adjusted = p_holm.get((best, other), p_holm.get((other, best)))
        differences = [a - b for a, b in zip(accuracy[best], accuracy[other], strict=True)]
        gap = f"learning rate {other:g} (by {statistics.mean(differences):.4f}, p_holm = "
        assert gap in sentence
        if adjusted < 0.05:
            assert f"learning rate {other:g}" in ranking["ahead_of"]
        else:
            needed = seeds_needed(  # at Holm's strictest step, alpha over the six pairs
                statistics.mean(differences), statistics.stdev(differences), alpha=0.05 / 6
            )
            assert f"learning rate {other:g}" in ranking["not_separated"]
            assert f"{adjusted:.4f}, {needed.seeds} seeds needed)" in sentence
    # This fake study has both cases: one gap survives Holm, the others do not.
    assert ranking["ahead_of"] and ranking["not_separated"]
    assert sentence.endswith("So the first place is not established on this evidence.")


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
        auc = attrs["test"]["roc_auc"]
        assert row["test_roc_auc"] == ("" if auc is None else repr(auc))
        _, labels, probabilities = predictions(attrs["predictions_path"])
        brier = np.mean((np.nan_to_num(probabilities, nan=0.0) - labels) ** 2)
        assert float(row["test_brier"]) == pytest.approx(brier)
        test = attrs["test"]
        collapsed = test["tp"] + test["fp"] == 0 or test["tn"] + test["fn"] == 0
        assert row["collapsed"] == str(test.get("collapsed", collapsed))
        if row["cell"] == COLLAPSED_CELL:
            assert row["collapsed"] == "True"
        if row["cell"] == DIVERGED_CELL:
            assert (row["diverged"], row["val_loss_last"]) == ("True", "")
        else:
            assert row["diverged"] == "False"
            assert float(row["val_loss_last"]) == attrs["final"]["val_loss"]


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
    assert 2 in summary["groups"][0]["collapsed_seeds"]


def test_out_writes_tables_and_nonempty_figures(finished: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    names = {"trials.csv", "summary.json", "summary.md", "val_accuracy.png", "val_loss.png",
             "roc.png", "reliability.png"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == names
    assert sorted(Path(line).name for line in done.stdout.split()) == sorted(names)
    for name in ("val_accuracy.png", "val_loss.png", "roc.png", "reliability.png"):
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
    # The diverged trial's NaN predictions rank lowest, as in Table 6's AUC: a constant
    # predictor, drawn as its curve (the diagonal) rather than left out.
    assert "no ROC curve" not in markdown + done.stderr


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
    # A predictions file that went missing (another machine's disk) is still in the artifact
    # store; one gone from both is skipped with a note.
    Path(complete[1].user_attrs["predictions_path"]).unlink()
    gone = complete[0].user_attrs["predictions_path"]
    Path(gone).unlink()
    store = study_folder(tmp_path / "artifacts", STUDY, study_uid(study)) / ARTIFACT_FOLDER
    for meta in optuna.artifacts.get_all_artifact_meta(complete[0], storage=study._storage):
        (store / meta.artifact_id).unlink()

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
    assert "ci95" not in record["test"]
    kept = next(r for r in summary["trials"] if r["trial"] == complete[1].number)
    assert set(kept["test"]["ci95"]) >= {"accuracy", "roc_auc"}
    assert "not found" not in markdown.replace(f"{gone} not found", "")
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


def test_each_trial_has_patient_bootstrap_intervals_brier_and_youden(finished: str) -> None:
    done = lrstudy("export", "--storage", finished, "--study", STUDY, "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["statistics"]["resamples"] == 2000 and summary["statistics"]["seed"] == 0
    key = (summary["spec"]["data"].get("patient_key")) or "person"
    images = {image.path: image for part in IMAGES.values() for image in part}
    for record in summary["trials"]:
        paths, labels, probabilities = predictions(record["predictions_path"])
        # The patients the export draws are the study's: several images each, by its key.
        patients = [patient_id(Path(path).stem, key) for path in paths]
        expected = [images[path].patient if key == "person-type" else images[path].person
                    for path in paths]  # fmt: skip
        assert patients == expected
        assert record["test"]["patients"] == len(set(patients)) < len(paths)
        intervals = bootstrap_intervals(labels, probabilities, patients, resamples=2000, seed=0)
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "brier"):
            low, high = intervals[name].low, intervals[name].high
            assert record["test"]["ci95"][name] == pytest.approx([low, high]), name
        brier = np.mean((np.nan_to_num(probabilities, nan=0.0) - labels) ** 2)
        assert record["test"]["brier"] == pytest.approx(brier)
        # Youden: the threshold is chosen on validation, then applied unchanged to test.
        val = predictions(Path(record["predictions_path"]).with_name("val_predictions.csv"))
        chosen = youden(val[1], val[2], labels, probabilities)
        got = record["test"]["youden"]
        assert got["threshold"] == pytest.approx(chosen.threshold)
        assert got["validation_j"] == pytest.approx(chosen.validation_j)
        if chosen.threshold is not None:
            predicted = np.nan_to_num(probabilities, nan=0.0) > chosen.threshold
            assert got["sensitivity"] == pytest.approx(predicted[labels == 1].mean())
            assert got["specificity"] == pytest.approx((~predicted[labels == 0]).mean())
    markdown = lrstudy("export", "--storage", finished, "--study", STUDY).stdout
    assert "## Test metrics per trial, with 95% intervals by bootstrap over patients" in markdown
    assert "## Secondary: sensitivity and specificity at the threshold chosen on validation" in (
        markdown
    )
    first = summary["trials"][0]
    ci = first["test"]["ci95"]["accuracy"]
    assert f"{first['test']['accuracy']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in markdown


def test_paired_tests_match_scipy_statsmodels_and_delong_on_the_predictions(
    finished: str,
) -> None:
    done = lrstudy(
        "export", "--storage", finished, "--study", STUDY, "--format", "json", "--resamples", "20"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    paired = summary["paired"]
    records = {(r["learning_rate"], r["seed"]): r for r in summary["trials"]}
    label_rate = dict(zip(LABELS, LEARNING_RATES, strict=True))
    # 6 pairs: 3 metrics over seeds, and DeLong and McNemar on each of 3 seeds.
    assert len(paired) == 6 * 3 + 6 * 3 * 2
    families = defaultdict(list)
    for test in paired:
        assert {"metric", "a", "b", "seed", "test", "statistic", "p", "p_holm"} <= set(test)
        assert test["a"] in LABELS and test["b"] in LABELS
        families[test["metric"], test["test"], test["seed"]].append(test)
    assert len(families) == 3 + 3 * 2
    for (metric, name, seed), tests in families.items():
        assert len(tests) == 6
        defined = [t for t in tests if t["p"] is not None]
        holm = multipletests([t["p"] for t in defined], method="holm")[1]
        assert [t["p_holm"] for t in defined] == pytest.approx(list(holm))
        for test in tests:
            a, b = label_rate[test["a"]], label_rate[test["b"]]
            if name == "paired t":
                assert seed is None and metric in ("val_accuracy", "val_loss", "test_roc_auc")
                column = {"val_accuracy": "val_accuracy_last", "val_loss": "val_loss_last"}
                x = [records[a, s][column.get(metric, metric)] for s in SEEDS]
                y = [records[b, s][column.get(metric, metric)] for s in SEEDS]
                kept = [
                    (u, v) for u, v in zip(x, y, strict=True) if u is not None and v is not None
                ]
                expected = stats.ttest_rel(*zip(*kept, strict=True))
                assert test["n"] == len(kept)
                assert test["p"] == pytest.approx(expected.pvalue)
                continue
            paths_a, labels, scores_a = predictions(records[a, seed]["predictions_path"])
            paths_b, _, scores_b = predictions(records[b, seed]["predictions_path"])
            assert paths_a == paths_b  # the pair is on the same images
            if name == "DeLong":
                expected = delong_test(labels, scores_a, scores_b)
                assert test["p"] == pytest.approx(expected.p)
                assert test["statistic"] == pytest.approx(expected.z)
            else:
                assert name == "McNemar" and metric == "test_accuracy"
                right_a = (np.nan_to_num(scores_a, nan=0.0) > 0.5) == labels
                right_b = (np.nan_to_num(scores_b, nan=0.0) > 0.5) == labels
                only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
                assert (test["only_a_right"], test["only_b_right"]) == (only_a, only_b)
                if only_a + only_b:
                    expected_p = stats.binomtest(min(only_a, only_b), only_a + only_b).pvalue
                    assert test["p"] == pytest.approx(expected_p)
                else:
                    assert test["p"] == 1.0
    # Some per-seed pairs differ after Holm, as the diverged and collapsed lr 0.1 must.
    assert any(t["p_holm"] < 0.05 for t in paired if t["test"] == "DeLong" and t["p_holm"])
    markdown = lrstudy("export", "--storage", finished, "--study", STUDY, "--resamples", "20")
    assert "### Per seed: DeLong's test of the test ROC AUCs, on the same images" in (
        markdown.stdout
    )


def test_a_moved_database_and_artifacts_folder_still_find_every_prediction(
    finished: str, tmp_path: Path
) -> None:
    """The results travel with the study: the worker's absolute paths are gone, the store not."""
    database = Path(finished.removeprefix("sqlite:///"))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    # As the README says to copy a database: SQLite's backup, which takes what is still in the
    # -wal file too (a plain file copy misses it while any process has the database open).
    with (
        closing(sqlite3.connect(database)) as source,
        closing(sqlite3.connect(moved / "study.db")) as copy,
    ):
        source.backup(copy)
    shutil.copytree(database.parent / "artifacts", moved / "artifacts")
    url = f"sqlite:///{moved / 'study.db'}"
    study = optuna.load_study(study_name=STUDY, storage=url)
    original = Path(study.trials[0].user_attrs["predictions_path"])
    hidden = database.parent / "artifacts-away"
    (database.parent / "artifacts").rename(hidden)  # the recorded paths no longer exist
    try:
        assert not original.exists()
        out = tmp_path / "out"
        done = lrstudy("export", "--storage", url, "--study", STUDY, "--out", str(out),
                       "--artifacts", str(moved / "artifacts"), "--resamples", "20")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "not found" not in done.stderr and "no artifact store" not in done.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert all("ci95" in r["test"] and r["test"]["youden"] for r in summary["trials"])
        with Image.open(out / "roc.png") as image:
            assert len(np.unique(np.asarray(image.convert("L")))) > 20
        assert (out / "reliability.png").stat().st_size > 0
        # Without --artifacts the stored spec's folder is gone too: said, and nothing drawn.
        lost = lrstudy("export", "--storage", url, "--study", STUDY, "--out",
                       str(tmp_path / "lost"), "--resamples", "20")  # fmt: skip
        assert lost.returncode == 0, lost.stderr
        assert f"no artifact store of study {STUDY!r} found; pass --artifacts DIR" in lost.stderr
        assert "not found, nor in the artifact store" in lost.stderr
        assert not (tmp_path / "lost" / "roc.png").exists()
    finally:
        hidden.rename(database.parent / "artifacts")


def test_without_validation_predictions_youden_is_left_out_with_a_note(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    build_study(url, tmp_path / "artifacts", val_predictions=False)
    out = tmp_path / "out"
    done = lrstudy("export", "--storage", url, "--study", STUDY, "--out", str(out),
                   "--resamples", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert all(r["test"]["youden"] is None for r in summary["trials"])
    note = "Youden's threshold is not reported for 12 of 12 trials: no val_predictions.csv"
    assert note in done.stderr
    markdown = (out / "summary.md").read_text()
    assert note in markdown and "## Secondary" not in markdown


def test_resamples_and_seed_make_the_bootstrap_reproducible(finished: str) -> None:
    def ci(*options: str) -> dict:
        done = lrstudy("export", "--storage", finished, "--study", STUDY, "--format", "json",
                       *options)  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        return {"statistics": summary["statistics"], "ci": summary["trials"][3]["test"]["ci95"]}

    first = ci("--resamples", "50", "--seed", "3")
    assert first["statistics"]["resamples"] == 50 and first["statistics"]["seed"] == 3
    assert ci("--resamples", "50", "--seed", "3") == first
    assert ci("--resamples", "50", "--seed", "4")["ci"] != first["ci"]
    for option, value in (("--resamples", "0"), ("--seed", "-1")):
        done = lrstudy("export", "--storage", finished, "--study", STUDY, option, value)
        assert done.returncode == 2
        assert done.stderr.startswith(f"lrstudy: error: {option} must be")
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
        # An artifact store the spec names, away from the checkpoints (a share, say).
        "study.artifact_store": str(tmp_path / "store"),
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
    # Holm's correction counts the pairs with a p-value; a pair whose seeds all give one value
    # (a 2-epoch network can predict one class) has none, and the sentence says so.
    tested = [
        t for t in summary["paired"]
        if t["test"] == "paired t" and t["metric"] == "val_accuracy" and t["p"] is not None
    ]  # fmt: skip
    if tested:
        holm = f"paired t-tests over seeds, Holm-corrected over the {len(tested)} pair"
        assert holm in summary["headline"]
        assert (len(tested) < 6) == ("with a p-value (of 6)" in summary["headline"])
    else:
        assert "paired t-tests over seeds (no pair gives a p-value)" in summary["headline"]
    # The real predictions files, read from the artifact store, feed the figures and the
    # per-trial intervals: none is reported missing.
    assert "not found" not in done.stderr and "no artifact store" not in done.stderr
    metrics = {"accuracy", "precision", "recall", "specificity", "f1", "roc_auc"}
    for record in summary["trials"]:
        test = record["test"]
        assert metrics <= set(test["ci95"]), record["trial"]
        for name in metrics:
            low, high = test["ci95"][name]
            assert 0.0 <= low <= high <= 1.0 and low <= test[name] <= high, (record["trial"], name)
        assert 0.0 <= test["brier"] <= 1.0
        assert {"threshold", "sensitivity", "specificity"} <= set(test["youden"])
    paired = summary["paired"]
    assert len(paired) == 6 * 3 + 6 * 3 * 2
    keys = {"metric", "a", "b", "seed", "test", "statistic", "p", "p_holm"}
    assert all(set(t) >= keys for t in paired)
    labels = {group["label"] for group in summary["groups"]}
    assert {t["a"] for t in paired} | {t["b"] for t in paired} <= labels
    over_seeds = [t for t in paired if t["seed"] is None]
    assert {t["metric"] for t in over_seeds} == {"val_accuracy", "val_loss", "test_roc_auc"}
    per_seed = [t for t in paired if t["seed"] is not None]
    assert sorted({t["test"] for t in per_seed}) == ["DeLong", "McNemar"]
    assert all(t["p_holm"] is None or t["p_holm"] >= t["p"] for t in paired)
    for figure in ("roc.png", "reliability.png"):
        assert (out / figure).is_file(), figure
    assert not list((tmp_path / "artifacts").glob("real-*/dashboard-artifacts"))
    # With the checkpoints' folder gone, the named store alone still gives every prediction.
    shutil.rmtree(tmp_path / "artifacts")
    again = lrstudy("export", "--storage", url, "--study", "real", "--out", str(tmp_path / "b"),
                    "--resamples", "50")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "not found" not in again.stderr and "no artifact store" not in again.stderr
    moved = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["test"]["youden"] for r in moved["trials"]] == [
        r["test"]["youden"] for r in summary["trials"]
    ]
    assert (tmp_path / "b" / "roc.png").is_file()


def test_predictions_rank_by_the_logit_column_and_fall_back_to_probabilities(
    tmp_path: Path,
) -> None:
    """The trainer writes each image's logit next to its probability: DeLong, the ROC curve
    and the AUC intervals rank the logits, which keep their order where probabilities reach
    1.0 in float64; a file of an older trainer, without the column, ranks its probabilities."""
    from study.results._predictions import _read

    rows = [("a.jpeg", 0, 38.0), ("b.jpeg", 1, 40.0), ("c.jpeg", 1, 45.0)]
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    new.write_text("path,label,probability,logit\n" + "".join(
        f"{path},{label},{1 / (1 + math.exp(-z))!r},{z!r}\n" for path, label, z in rows
    ))  # fmt: skip
    old.write_text("path,label,probability\n" + "".join(
        f"{path},{label},{1 / (1 + math.exp(-z))!r}\n" for path, label, z in rows
    ))  # fmt: skip
    with_logits, problem = _read(None, None, str(new))
    assert problem is None and with_logits is not None
    assert with_logits.scores.tolist() == [38.0, 40.0, 45.0]
    assert with_logits.probabilities.tolist() == [1.0, 1.0, 1.0]
    assert with_logits.on(["c.jpeg", "a.jpeg", "b.jpeg"]).scores.tolist() == [45.0, 38.0, 40.0]
    without, problem = _read(None, None, str(old))
    assert problem is None and without is not None
    assert without.scores.tolist() == without.probabilities.tolist() == [1.0, 1.0, 1.0]


def test_a_protocol_stored_before_the_base_and_backend_keys_reads_their_defaults() -> None:
    from study.results._markdown import protocol_lines
    from study.spec import load_preset

    spec = load_preset("paper").to_dict()
    for key in ("freeze_base", "backend", "steps_per_execution"):
        del spec["train"][key]  # as stored before those keys existed
    line = protocol_lines(spec)[0]
    assert line.startswith("**Protocol:** inception_v3 (imagenet weights, fine-tuned), 224 px")
    assert "Keras on tensorflow" in line
