"""Built-in study specs; ``paper`` is Kim & Ye (2022) and gives every key its default."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from trainer._config import TrainConfig, train_keys
from trainer._dataset import DataConfig
from trainer._errors import InputError

# Kim & Ye (2022): Inception V3 with ImageNet weights, 224 px, 60 epochs of Adam at batch 8, four
# learning rates by three seeds, on the paper's patient-disjoint split (their Table 2). The
# [train] and [data] defaults are the trainer's own (TrainConfig and DataConfig).
PAPER: dict[str, dict[str, Any]] = {
    "study": {
        "name": "kim-ye-2022",
        "storage": "sqlite:///lrstudy.db",
        "objective": "val_accuracy",
        "reduce": "last",
        "artifacts": "lrstudy-artifacts",
        "artifact_store": "",
    },
    "grid": {
        "learning_rate": [0.1, 0.01, 0.001, 0.0001],
        "seed": [0, 1, 2],
    },
    "train": dataclasses.asdict(TrainConfig()),
    "data": {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(DataConfig()).items()
    },
    "worker": {
        "heartbeat_s": 30,
        "grace_s": 120,
        "max_retries": 2,
    },
}

# A smoke run: the paper's grid, split, optimizer and code path (spec, cache, feed, training loop,
# checkpoints, workers, storage, export), shrunk until 12 cells finish on a laptop CPU in a few
# minutes. Only these keys differ from PAPER. A small CNN stands in for Inception V3: at 75 px
# from random weights, Inception V3 took 12 minutes on 2 busy cores and every cell ended at
# val_accuracy 0.5 (one class predicted), which cannot tell a working pipeline from a broken one;
# the small CNN learns within 3 epochs, so the learning rates visibly differ.
QUICK_SIZING: dict[str, dict[str, Any]] = {
    "study": {"name": "kim-ye-2022-quick"},
    "train": {"model": "small_cnn", "weights": "none", "image_size": 64, "epochs": 3},
    "data": {"limit_per_class": 100},
}


def _sized(
    base: dict[str, dict[str, Any]], sizing: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    sized = copy.deepcopy(base)
    for section, body in sizing.items():
        sized[section].update(body)
    return sized


QUICK = _sized(PAPER, QUICK_SIZING)
# What `lrstudy run --preset quick` says before and after, so no one mistakes its numbers.
QUICK_NOTE = (
    "preset quick is a SMOKE RUN: the paper's grid and code path with a small CNN instead of "
    "Inception V3, small images, a subset and few epochs. It shows the pipeline works; its "
    "numbers are not the paper's. For the protocol: --preset paper."
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER, "quick": QUICK}

# --- the commented TOML of `lrstudy init --preset NAME` -----------------------------------------

_HEADERS = {
    "paper": """\
# lrstudy study spec "paper": Kim & Ye (2022), Inception V3 on chest X-rays, learning rate x seed.
""",
    "quick": """\
# lrstudy study spec "quick": a SMOKE RUN, not the paper's protocol. Its numbers are NOT the
# paper's: it checks that the whole pipeline works, on a laptop CPU, in a few minutes.
# The paper's 4 x 3 grid, split, Adam and code path (cache, training loop, checkpoints, workers,
# export), made small: a small CNN instead of Inception V3, random initial weights instead of
# ImageNet's (no download), 64 px instead of 224, 3 epochs instead of 60, and at most 100 images
# per class in each of train/val/test. For the real protocol: lrstudy init --preset paper.
""",
}
_USAGE = """\
# Run it:   lrstudy run --spec THIS_FILE --data DIR     (DIR, or "kaggle" for the Kaggle download)
# Override any key without editing:  --set train.epochs=2 --set 'grid.seed=[0]'
# Keys left out take the paper's values.
"""
# Said above a section's keys.
_INTROS = {
    "grid": """\
# One trial per combination; every cell runs exactly once. Further axes may name any [train] key,
# for example  batch_size = [8, 32].
""",
}
# Said after a key; what a key without a value (None) shows as a commented-out example.
_NOTES = {
    **{f"train.{key}": item.metadata["help"] for key, item in train_keys().items()},
    "study.name": "the Optuna study name; one spec per name",
    "study.storage": "or postgresql://USER@HOST/DB (password: PGPASSWORD or ~/.pgpass)",
    "study.objective": "the value each trial ends with (maximised)",
    "study.reduce": '"last" epoch\'s value (as the paper) or the "best" epoch\'s',
    "study.artifacts": "checkpoints and predictions; machines may share this folder",
    "study.artifact_store": 'files export and dashboard read; "": in the study folder',
    "data.root": 'the dataset folder, or "kaggle"; required here or as --data DIR',
    "data.split": '"paper" (Table 2), "kaggle" (folders), "ratios", "paper-by-image" (leaks)',
    "data.ratios": 'train, val, test; used by split = "ratios"',
    "data.limit_per_class": "at most this many images per class in each part",
    "data.cache_dir": "preprocessed images; defaults to the user cache folder",
    "data.skip_bad": "true: leave out images that cannot be decoded instead of stopping",
    "data.patient_key": '"person-type" (personN_bacteria, personN_virus: two) or "person" (one)',
    "worker.heartbeat_s": "a running trial's heartbeat interval",
    "worker.grace_s": "a trial silent this long is failed and its cell runs again",
    "worker.max_retries": "times a failing cell is retried before it stays failed",
}
_EXAMPLES = {
    "data.root": "chest_xray",
    "data.limit_per_class": 50,
    "data.cache_dir": "/path",
}


def preset_mapping(name: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of a preset's spec mapping, safe to modify."""
    if name not in PRESETS:
        raise InputError(
            f"--preset must be one of {', '.join(sorted(PRESETS))}; got {name!r}. "
            "Use --preset paper (the protocol), --preset quick (a smoke run) or --spec FILE."
        )
    return copy.deepcopy(PRESETS[name])


def preset_toml(name: str) -> str:
    """The preset as the commented TOML spec that `lrstudy init` writes.

    Written from the preset mapping itself, so the file loads back to the same spec: every key
    appears, a key without a value as a commented-out example.
    """
    mapping = preset_mapping(name)
    parts = [_HEADERS[name], _USAGE]
    for section, body in mapping.items():
        lines = []
        for key, value in body.items():
            if value is None:
                lines.append((f"# {key} = {_toml(_EXAMPLES[f'{section}.{key}'])}", key))
            else:
                lines.append((f"{key} = {_toml(value)}", key))
        width = max(len(text) for text, _ in lines) + 2
        parts.append(f"\n[{section}]\n{_INTROS.get(section, '')}")
        for text, key in lines:
            note = _NOTES.get(f"{section}.{key}")
            parts.append(f"{text.ljust(width)}# {note}\n" if note else f"{text}\n")
    return "".join(parts)


def _toml(value: Any) -> str:
    # JSON's strings, numbers, booleans and arrays are valid TOML values.
    return json.dumps(value)


PAPER_TOML = preset_toml("paper")
