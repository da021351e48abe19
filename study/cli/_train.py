"""``lrstudy train``: one grid cell from the command line, without a study."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import TYPE_CHECKING, Any

from study.cli._common import flag_error
from study.cli._data import add_data_arguments, data_config
from trainer import TEST_METRICS, CellConfig, ConfigError, train_keys

if TYPE_CHECKING:
    from trainer._train import CellResult


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=[common],
        help="Train and test one cell (one learning rate, one seed).",
        description=(
            "Train one cell with a progress bar per epoch, then test it and print its metrics. "
            "Writes result.json, predictions.csv, history.csv and the epoch checkpoint into "
            "--out; --resume continues an interrupted cell from its last checkpoint."
        ),
    )
    add_data_arguments(parser)
    parser.add_argument("--lr", type=float, required=True, help="Learning rate, e.g. 0.001.")
    parser.add_argument("--seed", type=int, required=True, help="Seed of init and batch order.")
    add_train_arguments(parser)
    parser.add_argument(
        "--out", default=None, help="Output folder (default runs/MODEL-lrLR-seedSEED)."
    )
    parser.add_argument(
        "--resume", action="store_true", help="Continue from the checkpoint in --out."
    )
    parser.set_defaults(handler=_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per training key (``--image-size`` for ``image_size``), from ``TrainConfig``:
    its default, its help; the trainer checks the value. ``--backend`` defaults to
    $KERAS_BACKEND where that is set, as Keras itself would choose."""
    for key, item in train_keys().items():
        flag = f"--{key.replace('_', '-')}"
        default = (
            os.environ.get("KERAS_BACKEND", item.default) if key == "backend" else item.default
        )
        help_text = f"{item.metadata['help']} (default {json.dumps(default)})."
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif isinstance(default, int):
            parser.add_argument(flag, type=int, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=_text_or_boolean, default=default, help=help_text)


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The training keys as the flags of ``add_train_arguments`` set them."""
    return {key: getattr(args, key) for key in train_keys()}


def _text_or_boolean(text: str) -> str | bool:
    # jit_compile takes "auto", true or false; other keys take their text as it is.
    return {"true": True, "false": False}.get(text.lower(), text)


def _train(args: argparse.Namespace) -> int:
    from trainer._determinism import deterministic_xla
    from trainer._train import use_deterministic_xla

    # Both are read once, before Keras loads (the backend) and JAX starts (the XLA flag).
    os.environ["KERAS_BACKEND"] = str(args.backend)
    if args.backend == "jax" and deterministic_xla(args.deterministic):
        use_deterministic_xla()

    from trainer._train import train_cell

    try:
        config = CellConfig(
            data=data_config(args),
            learning_rate=args.lr,
            seed=args.seed,
            out_dir=args.out or f"runs/{args.model}-lr{args.lr:g}-seed{args.seed}",
            **train_config(args),
        )
    except ConfigError as error:
        raise flag_error(error, {"learning_rate": "--lr", "out_dir": "--out"}) from error
    result = train_cell(config, resume=args.resume, verbose=True)
    print(format_result(result))
    return 0


def format_result(result: CellResult) -> str:
    """The history, validation and test metrics as a plain-text table."""
    config = result.config
    lines = [
        f"cell {config.model} lr={config.learning_rate:g} seed={config.seed}: "
        f"{result.epochs_run} of {config.epochs} epochs"
        + (f", diverged in epoch {result.diverged_epoch}" if result.diverged else ""),
        f"{'epoch':>5}  {'loss':>9}  {'accuracy':>8}  {'val_loss':>9}  {'val_acc':>8}  "
        f"{'seconds':>8}",
    ]
    for row in result.history:
        lines.append(
            f"{row['epoch']:>5}  {_number(row['loss']):>9}  {_number(row['accuracy']):>8}  "
            f"{_number(row['val_loss']):>9}  {_number(row['val_accuracy']):>8}  "
            f"{row['seconds']:>8.1f}"
        )
    final, best, test = result.final, result.best, result.test
    lines += [
        f"validation  last (epoch {final['epoch']}): accuracy {_number(final['val_accuracy'])}"
        f", loss {_number(final['val_loss'])}",
        f"validation  best (epoch {best['epoch']}): accuracy {_number(best['val_accuracy'])}"
        f", loss {_number(best['val_loss'])}",
        f"test, {test['weights']} weights (epoch {test['epoch']}):",
    ]
    for name in TEST_METRICS:
        value = test[name]
        shown = _number(value) if value is not None else f"n/a ({test['undefined'][name]})"
        lines.append(f"  {name:<12}{shown}")
    lines.append(
        f"  {'confusion':<12}TN {test['tn']}  FP {test['fp']}  FN {test['fn']}  TP {test['tp']}"
        + ("  (collapsed: one class predicted for every image)" if test["collapsed"] else "")
    )
    lines.append(f"files in {config.out_dir}: result.json predictions.csv history.csv checkpoint")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:.4f}"
