"""Built-in study specs; ``paper`` is Kim & Ye (2022) and gives every key its default."""

from __future__ import annotations

import copy
from typing import Any

from trainer import InputError

# Kim & Ye (2022): Inception V3 with ImageNet weights, 224 px, 60 epochs of Adam at batch 8, four
# learning rates by three seeds, on the paper's patient-disjoint split (their Table 2).
PAPER: dict[str, dict[str, Any]] = {
    "study": {
        "name": "kim-ye-2022",
        "storage": "sqlite:///lrstudy.db",
        "objective": "val_accuracy",
        "reduce": "last",
        "artifacts": "lrstudy-artifacts",
    },
    "grid": {
        "learning_rate": [0.1, 0.01, 0.001, 0.0001],
        "seed": [0, 1, 2],
    },
    "train": {
        "model": "inception_v3",
        "weights": "imagenet",
        "image_size": 224,
        "epochs": 60,
        "batch_size": 8,
        "eval_batch_size": 64,
        "optimizer": "adam",
        "test_weights": "last",
        "deterministic": True,
    },
    "data": {
        "root": None,
        "split": "paper",
        "split_seed": 0,
        "ratios": [0.7, 0.15, 0.15],
        "limit_per_class": None,
        "cache_dir": None,
        "skip_bad": False,
    },
    "worker": {
        "heartbeat_s": 30,
        "grace_s": 120,
        "max_retries": 2,
    },
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER}

# What `lrstudy init` writes: the paper preset, every key explained. A test loads it back and
# compares it with PAPER, so the two cannot drift apart.
PAPER_TOML = """\
# lrstudy study spec: Kim & Ye (2022), Inception V3 on chest X-rays, learning rate x seed.
# Run it:   lrstudy run --spec THIS_FILE --data DIR
# Override any key without editing:  --set train.epochs=2 --set 'grid.seed=[0]'
# Keys left out take the paper's values shown here.

[study]
name = "kim-ye-2022"              # the Optuna study name; one spec per name
storage = "sqlite:///lrstudy.db"  # or postgresql+psycopg://USER@HOST/DB (password: use ~/.pgpass)
objective = "val_accuracy"        # the value each trial ends with (maximised)
reduce = "last"                   # "last" epoch's value (as the paper) or the "best" epoch's
artifacts = "lrstudy-artifacts"   # checkpoints and predictions; machines may share this folder

[grid]
# One trial per combination; every cell runs exactly once. Further axes may name any [train] key,
# for example  batch_size = [8, 32].
learning_rate = [0.1, 0.01, 0.001, 0.0001]
seed = [0, 1, 2]

[train]
model = "inception_v3"     # or "small_cnn" for quick runs
weights = "imagenet"       # "imagenet" (downloaded by Keras), "none", or a local weights file
image_size = 224           # pixels per side; Inception V3 needs at least 75
epochs = 60
batch_size = 8
eval_batch_size = 64       # evaluation only; results do not depend on it
optimizer = "adam"
test_weights = "last"      # test the "last" or the "best" (by val_accuracy) epoch's weights
deterministic = true       # reproducible to the last digit; slower on GPUs

[data]
# root = "chest_xray"      # the dataset folder; required here or as --data DIR
split = "paper"            # "paper" (Table 2 counts), "kaggle" (folders as given) or "ratios"
split_seed = 0
ratios = [0.7, 0.15, 0.15] # train, val, test; used by split = "ratios"
# limit_per_class = 50     # a small stratified subsample per part, for quick runs
# cache_dir = "/path"      # preprocessed images; defaults to the user cache folder
skip_bad = false           # true: leave out images that cannot be decoded instead of stopping

[worker]
heartbeat_s = 30           # a running trial's heartbeat interval
grace_s = 120              # a trial silent this long is failed and its cell runs again
max_retries = 2            # times a failing cell is retried before it stays failed
"""


def preset_mapping(name: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of a preset's spec mapping, safe to modify."""
    if name not in PRESETS:
        raise InputError(
            f"--preset must be one of {', '.join(sorted(PRESETS))}; got {name!r}. "
            "Use --preset paper or --spec FILE."
        )
    return copy.deepcopy(PRESETS[name])
