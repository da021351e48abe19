"""CellObjective: a grid cell trained through the real trainer on a real SQLite study."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pytest

from storage import open_storage
from study.grid import CellObjective, create_from_spec, spec_from_study
from study.grid._attrs import SPEC
from study.spec import StudySpec, cell_config, cell_key, check_cells, load_preset
from trainer import InputError

pytestmark = pytest.mark.slow

QUICK = [
    'train.model="small_cnn"',
    'train.weights="none"',
    "train.image_size=32",
    "train.epochs=2",
    "train.eval_batch_size=16",
    'data.split="kaggle"',
    "grid.seed=[0]",
]


def quick_spec(tmp_path: Path, data: Path, cache: str, *overrides: str) -> StudySpec:
    spec = load_preset("paper", [*QUICK, "study.name=obj", *overrides])
    return spec.with_locations(
        data_root=str(data), cache_dir=cache, artifacts=str(tmp_path / "artifacts")
    )


def optimize(tmp_path: Path, spec: StudySpec, objective: CellObjective) -> optuna.Study:
    """Plain Optuna: the objective works with any grid study, not only our worker."""
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"),
        study_name=spec.study.name,
        sampler=optuna.samplers.GridSampler(
            {axis: list(values) for axis, values in spec.grid.items()}, seed=0
        ),
        direction="maximize",
        load_if_exists=True,
    )
    study.optimize(objective, n_trials=len(spec.cells()))
    return study


def test_each_cell_records_its_curve_metrics_and_objective(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    spec = quick_spec(tmp_path, dataset_dir, cache_dir, "grid.learning_rate=[0.01, 0.001]")
    study = optimize(tmp_path, spec, CellObjective(spec))
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.params["learning_rate"] for t in trials} == {0.01, 0.001}
    for trial in trials:
        attrs = trial.user_attrs
        history = attrs["history"]
        assert history["epoch"] == [1, 2]
        assert trial.intermediate_values == dict(enumerate(history["val_accuracy"], start=1))
        assert trial.value == attrs["final"]["val_accuracy"] == history["val_accuracy"][-1]
        assert attrs["best"]["val_accuracy"] == max(history["val_accuracy"])
        assert len(history["val_loss"]) == len(history["loss"]) == len(history["accuracy"]) == 2
        assert set(attrs["test"]) >= {"accuracy", "roc_auc", "weights", "epoch"}
        assert attrs["diverged"] is False and attrs["diverged_epoch"] is None
        assert attrs["device"].startswith("cpu")
        assert "worker_id" not in attrs and "host" not in attrs  # the worker's to record
        assert attrs["epochs"] == attrs["epochs_run"] == 2
        assert attrs["duration_s"] > 0
        key = cell_key(trial.params)
        assert attrs["cell"] == key
        out_dir = tmp_path / "artifacts" / "obj" / key
        assert attrs["out_dir"] == str(out_dir)
        assert Path(attrs["predictions_path"]).parent == out_dir
        assert (out_dir / "result.json").is_file()
        json.dumps(attrs, allow_nan=False)  # JSON-safe for every storage and exporter


def test_reduce_best_returns_the_best_epoch(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    spec = quick_spec(
        tmp_path, dataset_dir, cache_dir, "grid.learning_rate=[0.003]", "study.reduce=best"
    )
    (trial,) = optimize(tmp_path, spec, CellObjective(spec)).get_trials()
    assert trial.value == trial.user_attrs["best"]["val_accuracy"]
    assert trial.value == max(trial.intermediate_values.values())
    assert "worker_id" not in trial.user_attrs


def test_a_diverged_cell_is_a_complete_result(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    spec = quick_spec(tmp_path, dataset_dir, cache_dir, "grid.learning_rate=[1000000.0]")
    (trial,) = optimize(tmp_path, spec, CellObjective(spec)).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["diverged"] is True
    assert trial.user_attrs["diverged_epoch"] == 1
    assert trial.user_attrs["history"]["loss"] == [None]  # NaN, stored as JSON null
    # NaN predicts NORMAL, as Keras's accuracy counts it: 6 of the 14 validation images.
    assert trial.value == trial.user_attrs["final"]["val_accuracy"] == pytest.approx(6 / 14)
    assert trial.user_attrs["test"]["collapsed"] is True
    assert trial.user_attrs["test_roc_auc"] == 0.5


def test_a_cell_resumes_from_its_checkpoint(
    tmp_path: Path, dataset_dir: Path, cache_dir: str
) -> None:
    from trainer._train import train_cell

    spec = quick_spec(tmp_path, dataset_dir, cache_dir, "grid.learning_rate=[0.01]")
    params = spec.cells()[0]
    # An earlier try that got through epoch 1 of 2 before its worker died.
    first = train_cell(cell_config(spec, params), lambda epoch, logs: True, resume=True)
    assert first.epochs_run == 1
    (trial,) = optimize(tmp_path, spec, CellObjective(spec)).get_trials()
    history = trial.user_attrs["history"]
    assert history["epoch"] == [1, 2]
    # Epoch 1 comes from the checkpoint (its timing is the earlier try's), not a new run.
    assert history["seconds"][0] == first.history[0]["seconds"]
    assert history["val_accuracy"][0] == first.history[0]["val_accuracy"]
    assert sorted(trial.intermediate_values) == [1, 2]


def test_the_objective_pickles_for_worker_processes() -> None:
    spec = load_preset("paper", ["data.root=/data"])
    objective = pickle.loads(pickle.dumps(CellObjective(spec)))
    assert objective.spec == spec


def test_the_freeze_base_axis_doubles_the_grid_and_reaches_the_cells(dataset_dir: Path) -> None:
    spec = load_preset("paper", ["grid.freeze_base=[false, true]", f"data.root={dataset_dir}"])
    assert len(spec.cells()) == 24
    frozen = {cell_config(spec, params).freeze_base for params in spec.cells()}
    assert frozen == {False, True}


def test_a_study_stored_before_the_new_keys_loads_as_the_protocol_it_ran(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    spec = load_preset("paper", ["study.name=old", "data.patient_key=person"])
    spec = spec.with_locations(storage=url)
    study, created = create_from_spec(open_storage(url), spec)
    assert created
    stored = study.user_attrs[SPEC]
    for section, key in (("train", "freeze_base"), ("train", "backend"), ("data", "patient_key"),
                         ("study", "artifact_store")):  # fmt: skip
        del stored[section][key]
    study.set_user_attr(SPEC, stored)  # as a study made before these keys existed holds it
    old = spec_from_study(study, url)
    assert (old.train.freeze_base, old.train.backend) == (False, "tensorflow")
    assert old.study.artifact_store == ""  # its store stays in its folder
    assert old.data.patient_key == "person"  # the merged key old studies split by
    # The same protocol given again opens it (the stored fingerprint predates the keys) ...
    assert create_from_spec(open_storage(url), spec)[1] is False
    # ... and another one is refused, naming the key.
    with pytest.raises(InputError, match=r"data\.patient_key \(stored 'person', given"):
        create_from_spec(open_storage(url), load_preset("paper", ["study.name=old"]))
    with pytest.raises(InputError, match=r"train\.backend \(stored 'tensorflow', given 'jax'"):
        jax = ["study.name=old", "data.patient_key=person", "train.backend=jax"]
        create_from_spec(open_storage(url), load_preset("paper", jax).with_locations(storage=url))


def test_cell_configs_follow_the_grid(tmp_path: Path, dataset_dir: Path) -> None:
    spec = load_preset("paper", [*QUICK, "grid.batch_size=[4, 8]", f"data.root={dataset_dir}"])
    configs = [cell_config(spec, params) for params in spec.cells()]
    assert len(configs) == 8
    assert {(c.learning_rate, c.batch_size) for c in configs} == {
        (lr, batch) for lr in (0.1, 0.01, 0.001, 0.0001) for batch in (4, 8)
    }
    assert all(c.epochs == 2 and c.model == "small_cnn" for c in configs)
    assert len({c.out_dir for c in configs}) == 8


def test_bad_cells_fail_before_any_worker_starts(dataset_dir: Path) -> None:
    spec = load_preset("paper", [f"data.root={dataset_dir}", "grid.image_size=[299, 64]"])
    with pytest.raises(
        InputError, match=r"cell .*image_size=64.*grid\.image_size .*>= 75 .*got 64"
    ):
        check_cells(spec)
    with pytest.raises(InputError, match=r"data\.root is not set.*--data DIR"):
        check_cells(load_preset("paper"))
