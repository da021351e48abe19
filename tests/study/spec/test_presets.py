"""The ``paper`` and ``quick`` presets, ``lrstudy init --preset`` and ``--data kaggle`` in the
study commands, as a newcomer meets them (subprocesses, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from study.grid._attrs import SPEC as SPEC_ATTR
from study.spec import PRESETS, QUICK_NOTE, load_preset, load_spec, preset_toml
from study.spec._presets import PAPER
from tests.study.cli.test_fetch import lrstudy, manual_download_error, write_record
from tests.trainer.test_scan import write_kaggle_download
from trainer._model import MIN_IMAGE_SIZE

# What `quick` may change, and nothing else: it must stay the paper's protocol, made small.
QUICK_DIFFERS_IN = {
    "study.name",
    "train.model",
    "train.weights",
    "train.image_size",
    "train.epochs",
    "data.limit_per_class",
}


def flat(spec: dict[str, dict]) -> dict[str, object]:
    return {
        f"{section}.{key}": value for section, body in spec.items() for key, value in body.items()
    }


def test_quick_is_the_paper_grid_and_protocol_made_small() -> None:
    paper, quick = load_preset("paper"), load_preset("quick")
    assert quick.grid == paper.grid
    assert len(quick.cells()) == 12
    old, new = flat(paper.to_dict()), flat(quick.to_dict())
    assert old.keys() == new.keys()
    assert {key for key in old if old[key] != new[key]} == QUICK_DIFFERS_IN
    # Smaller in every way that costs time, and off the network apart from the dataset.
    assert (quick.train.model, quick.train.weights) == ("small_cnn", "none")
    assert MIN_IMAGE_SIZE["small_cnn"] <= quick.train.image_size < paper.train.image_size
    assert 1 < quick.train.epochs < paper.train.epochs  # > 1: resume and "last" vs "best" matter
    assert quick.data.limit_per_class is not None and quick.data.split == "paper"
    assert quick.study.name != paper.study.name  # both may share one storage


def test_quick_says_it_is_a_smoke_run_whose_numbers_are_not_the_papers() -> None:
    assert "SMOKE RUN" in QUICK_NOTE and "not the paper's" in QUICK_NOTE
    assert "SMOKE RUN" in preset_toml("quick") and "NOT the" in preset_toml("quick")
    assert "SMOKE" not in preset_toml("paper")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_init_writes_each_preset_as_a_commented_spec_that_loads_back(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.toml"
    done = lrstudy(tmp_path, "init", "--preset", name, str(path))
    assert done.returncode == 0, done.stderr
    assert f"wrote {path}" in done.stdout
    assert load_spec(path) == load_preset(name)
    text = path.read_text()
    for section, body in PAPER.items():
        assert f"\n[{section}]\n" in text
        for key in body:
            assert f"\n{key} =" in text or f"\n# {key} =" in text, (section, key)
    assert text.count("  # ") >= 15  # the keys are explained, not bare


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--preset", "fast", "FILE"],
        ["create", "--preset", "fast", "--data", "DATA"],
        ["run", "--preset", "fast", "--data", "DATA", "--workers", "1"],
    ],
)
def test_an_unknown_preset_ends_in_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    args = [{"FILE": str(tmp_path / "s.toml"), "DATA": str(tmp_path)}.get(a, a) for a in args]
    done = lrstudy(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "lrstudy: error: --preset must be one of paper, quick; got 'fast'. Use --preset paper "
        "(the protocol), --preset quick (a smoke run) or --spec FILE."
    ]
    assert not (tmp_path / "s.toml").exists()


def test_data_kaggle_without_a_download_offline_says_how_to_get_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    manual_download_error(lrstudy(tmp_path, "create", "--preset", "quick", "--data", "kaggle",
                                  "--storage", url))  # fmt: skip
    manual_download_error(lrstudy(tmp_path, "train", "kaggle", "--lr", "0.1", "--seed", "0"))
    assert not (tmp_path / "study.db").exists()


def test_run_preset_quick_on_the_kaggle_download_finishes_and_says_smoke_run(
    tmp_path: Path,
) -> None:
    """The README's first command, shrunk further for a test: --data kaggle reuses the recorded
    download (the nested copy and __MACOSX left out), and the summary is labelled."""
    root = write_kaggle_download(tmp_path / "download").root
    write_record(tmp_path, tmp_path / "download")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    done = lrstudy(
        tmp_path, "run", "--preset", "quick", "--data", "kaggle", "--storage", url,
        "--set", 'train.model="small_cnn"', "--set", "train.image_size=32",
        "--set", "train.epochs=1", "--set", "data.limit_per_class=4",
        "--workers", "2", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith(QUICK_NOTE)
    assert "SMOKE RUN" in done.stderr  # said before it starts, too
    assert "12/12 complete" in done.stdout
    study = optuna.load_study(study_name="kim-ye-2022-quick", storage=url)
    assert study.user_attrs[SPEC_ATTR]["data"]["root"] == str(root.resolve())
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 12


# Kaggle's and Keras's hosts unreachable in any environment: the weights host becomes this
# machine's closed port (closed_origin).
def test_run_preset_paper_without_imagenet_weights_stops_before_creating_the_study(
    tmp_path: Path, dataset_dir: Path, closed_origin: str
) -> None:
    """Offline, every cell would fail and spend its retries, leaving the study failed for
    good; the run must refuse at once instead, in one line, and create nothing."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "study", "run", "--preset", "paper",
         "--data", str(dataset_dir), "--storage", url, "--workers", "1"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3], timeout=60,
        env={**os.environ, "HOME": str(tmp_path / "home"), "KERAS_HOME": str(tmp_path / "k"),
             "LRSTUDY_WEIGHTS_ORIGIN": closed_origin},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    *before, line = done.stderr.strip().splitlines()
    assert [entry.split(" INFO ")[-1][:24] for entry in before] == ["downloading the ImageNet"]
    assert line.startswith('lrstudy: error: weights "imagenet": cannot download ')
    assert line.endswith(": in a study, --set train.weights=none or =PATH")
    assert not (tmp_path / "study.db").exists()
