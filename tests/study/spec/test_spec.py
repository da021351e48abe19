"""The study spec: TOML loading, validation messages, overrides, presets and the fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.spec import (
    load_preset,
    load_spec,
    parse_override,
    protocol_differences,
    spec_from_mapping,
)
from study.spec._presets import PAPER, PAPER_TOML
from trainer import InputError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_init_text_loads_back_to_the_paper_preset(tmp_path: Path) -> None:
    path = write(tmp_path, PAPER_TOML)
    assert load_spec(path) == load_preset("paper")
    # Every key of the preset is written out (commented where TOML has no null).
    for section, body in PAPER.items():
        for key in body:
            assert f"\n{key} =" in PAPER_TOML or f"\n# {key} =" in PAPER_TOML, (section, key)


def test_paper_preset_is_the_papers_protocol() -> None:
    spec = load_preset("paper")
    assert spec.study.name == "kim-ye-2022"
    assert spec.grid == {"learning_rate": (0.1, 0.01, 0.001, 0.0001), "seed": (0, 1, 2)}
    assert len(spec.cells()) == 12
    assert (spec.train.model, spec.train.weights, spec.train.optimizer) == (
        "inception_v3",
        "imagenet",
        "adam",
    )
    assert (spec.train.image_size, spec.train.epochs, spec.train.batch_size) == (224, 60, 8)
    assert (spec.data.split, spec.data.split_seed, spec.study.reduce) == ("paper", 0, "last")


def test_a_file_inherits_the_paper_values_it_leaves_out(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, '[study]\nname = "quick"\n[train]\nepochs = 2\n'))
    paper = load_preset("paper")
    assert spec.study.name == "quick"
    assert spec.train.epochs == 2
    assert spec.train.batch_size == paper.train.batch_size
    assert spec.grid == paper.grid


def test_a_file_must_name_its_study(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"study\.name is missing"):
        load_spec(write(tmp_path, "[train]\nepochs = 2\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[train]\nepoch = 3",
            r"unknown key train\.epoch; allowed keys in \[train\] are .*epochs",
        ),
        ("[trian]\nepochs = 3", r"unknown section \[trian\]; allowed sections are \[study\]"),
        ("[train]\nepochs = 0", r"train\.epochs must be an integer >= 1; got 0"),
        ("[train]\nepochs = 2.5", r"train\.epochs must be an integer >= 1; got 2\.5"),
        ('[train]\nepochs = "60"', r"train\.epochs must be an integer >= 1; got '60'"),
        ("[train]\nepochs = true", r"train\.epochs must be an integer >= 1; got True"),
        ('[train]\nmodel = "vgg"', r'train\.model must be one of "inception_v3", "small_cnn"'),
        ('[study]\nreduce = "mean"', r'study\.reduce must be one of "last", "best"; got .mean'),
        ('[study]\nobjective = "auc"', r'study\.objective must be one of "val_accuracy"'),
        ('[study]\nname = "a/b"', r"study\.name must be letters, digits.*got 'a/b'"),
        (
            '[data]\nsplit = "random"',
            r'data\.split must be one of "kaggle", "paper", "ratios"',
        ),
        ("[data]\nratios = [0.5, 0.5]", r"data\.ratios must be an array of 3 numbers"),
        ("[data]\nratios = [0.5, 0.4, 0.4]", r"data\.ratios must be 3 numbers that sum to 1"),
        ("[data]\nlimit_per_class = 0", r"data\.limit_per_class must be an integer >= 1"),
        (
            '[train]\ndeterministic = "yes"',
            r'train\.deterministic must be true, false or "if-available"',
        ),
        ("[grid]\nlearning_rate = []", r"grid\.learning_rate must be a non-empty array"),
        ("[grid]\nlearning_rate = [0.1, -1]", r"grid\.learning_rate\[1\] must be a number > 0"),
        ("[grid]\nseed = [0, 0]", r"grid\.seed must be an array without repeated values"),
        ("[grid]\nseed = 3", r"grid\.seed must be a non-empty array of values; got 3"),
        ('[grid]\noptimizer = ["adam", "lion"]', r"grid\.optimizer\[1\] must be one of"),
        ("[grid]\nmomentum = [0.9]", r"unknown key grid\.momentum; allowed keys in \[grid\]"),
        ("[worker]\ngrace_s = 10", r"worker\.grace_s must be larger than worker\.heartbeat_s"),
        ("[worker]\nmax_retries = -1", r"worker\.max_retries must be an integer >= 0"),
        ("train = 3", r"\[train\] must be a table of keys; got 3"),
        ("[train\nepochs = 3", r"not valid TOML"),
    ],
)
def test_bad_values_are_named_with_the_rule_and_the_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    named = '[study]\nname = "s"'
    if "name =" in text:
        body = text
    elif "[study]" in text:
        body = text.replace("[study]", named)
    else:
        body = f"{text}\n{named}\n"
    path = write(tmp_path, body)
    with pytest.raises(InputError, match=expected) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message


def test_a_missing_file_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist; write one with `lrstudy init"):
        load_spec(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=2", ("train", "epochs", 2)),
        ("grid.seed=[0, 1]", ("grid", "seed", [0, 1])),
        ('train.model="small_cnn"', ("train", "model", "small_cnn")),
        ("train.model=small_cnn", ("train", "model", "small_cnn")),
        ("data.root=/data/chest x-ray", ("data", "root", "/data/chest x-ray")),
        ("train.deterministic=false", ("train", "deterministic", False)),
        ("grid.learning_rate=[1e-3]", ("grid", "learning_rate", [0.001])),
    ],
)
def test_overrides_are_toml_values(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["epochs=2", "train.epochs", "a.b.c=1", ".x=1", "train.=1"])
def test_malformed_overrides_are_refused(text: str) -> None:
    with pytest.raises(InputError, match=r"--set expects section\.key=VALUE; got"):
        parse_override(text)


def test_overrides_apply_and_are_validated() -> None:
    spec = load_preset("paper", ["train.epochs=1", "grid.seed=[0]", "grid.batch_size=[8, 32]"])
    assert spec.train.epochs == 1
    assert spec.grid == {
        "learning_rate": (0.1, 0.01, 0.001, 0.0001),
        "seed": (0,),
        "batch_size": (8, 32),
    }
    assert len(spec.cells()) == 8
    assert {"learning_rate": 0.1, "seed": 0, "batch_size": 32} in spec.cells()
    with pytest.raises(InputError, match=r"preset paper: train\.epochs must be .*got 'ten'"):
        load_preset("paper", ["train.epochs=ten"])
    with pytest.raises(InputError, match=r"unknown key train\.lr"):
        load_preset("paper", ["train.lr=0.1"])
    with pytest.raises(InputError, match=r"--preset must be one of paper, quick; got 'fast'"):
        load_preset("fast")


def test_the_spec_survives_a_json_round_trip() -> None:
    spec = load_preset("paper", ["data.limit_per_class=5", "data.root=/x", "grid.seed=[2, 0]"])
    again = spec_from_mapping(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()


def test_the_fingerprint_covers_the_protocol_only() -> None:
    spec = load_preset("paper")
    same = [
        ["data.root=/elsewhere", "data.cache_dir=/cache", "study.artifacts=/shared/art"],
        ["study.storage=postgresql://u@h/db", "study.name=other"],
        ["worker.heartbeat_s=10", "worker.grace_s=60", "worker.max_retries=5"],
        ["grid.learning_rate=[0.0001, 0.001, 0.01, 0.1]", "grid.seed=[2, 1, 0]"],
    ]
    for overrides in same:
        assert load_preset("paper", overrides).fingerprint() == spec.fingerprint(), overrides
    different = [
        ["train.epochs=59"],
        ["grid.seed=[0, 1]"],
        ["grid.batch_size=[8]"],
        ["data.split=kaggle"],
        ["data.limit_per_class=10"],
        ["study.reduce=best"],
        ["train.image_size=299"],
    ]
    prints = {load_preset("paper", overrides).fingerprint() for overrides in different}
    assert spec.fingerprint() not in prints
    assert len(prints) == len(different)


def test_the_fingerprint_is_the_same_in_another_process() -> None:
    code = "from study.spec import load_preset; print(load_preset('paper').fingerprint())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == load_preset("paper").fingerprint()


def test_protocol_differences_name_each_key() -> None:
    stored = load_preset("paper")
    given = load_preset("paper", ["train.epochs=1", "grid.seed=[0]", "data.root=/other"])
    differences = protocol_differences(stored, given)
    assert differences == [
        "grid.seed (stored [0, 1, 2], given [0])",
        "train.epochs (stored 60, given 1)",
    ]


def test_relative_locations_are_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_preset("paper", ["data.root=images", "study.artifacts=art"]).resolved()
    assert spec.data.root == str(tmp_path / "images")
    assert spec.study.artifacts == str(tmp_path / "art")
    assert spec.data.cache_dir is None


def test_speed_levers_default_to_the_paper_and_are_checked() -> None:
    spec = load_preset("paper")
    assert (spec.train.mixed_precision, spec.train.jit_compile) == (False, "auto")
    spec = load_preset("paper", ["train.mixed_precision=true", "train.jit_compile=false"])
    assert (spec.train.mixed_precision, spec.train.jit_compile) == (True, False)
    with pytest.raises(InputError, match=r"train\.mixed_precision must be true or false; got 1"):
        load_preset("paper", ["train.mixed_precision=1"])
    with pytest.raises(InputError, match=r'train\.jit_compile must be "auto", true or false'):
        load_preset("paper", ["train.jit_compile=xla"])
    with pytest.raises(InputError, match=r"train\.jit_compile must be .*got 1"):
        load_preset("paper", ["train.jit_compile=1"])


def test_levers_are_part_of_the_protocol_and_of_every_stored_spec() -> None:
    paper = load_preset("paper")
    assert paper.protocol()["train"]["mixed_precision"] is False
    assert paper.protocol()["train"]["jit_compile"] == "auto"
    changed = {
        load_preset("paper", [override]).fingerprint()
        for override in ("train.mixed_precision=true", "train.jit_compile=true")
    }
    assert paper.fingerprint() not in changed and len(changed) == 2
    stored = paper.to_dict()
    del stored["train"]["jit_compile"]
    with pytest.raises(InputError, match=r"train\.jit_compile is missing"):
        spec_from_mapping(stored)


def test_mixed_precision_is_a_grid_axis_and_jit_compile_is_not() -> None:
    spec = load_preset("paper", ["grid.mixed_precision=[false, true]", "grid.seed=[0]"])
    assert len(spec.cells()) == 8
    assert {"learning_rate": 0.1, "seed": 0, "mixed_precision": True} in spec.cells()
    with pytest.raises(InputError, match=r"train\.jit_compile cannot be a grid axis"):
        load_preset("paper", ["grid.jit_compile=[true, false]"])
