"""The plain config of one grid cell, checked when it is made."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from trainer._dataset import DataConfig
from trainer._errors import InputError
from trainer._model import MIN_IMAGE_SIZE, MODELS, OPTIMIZERS

TEST_WEIGHTS = ("last", "best")
# Fields that may change between a run and its resumption without changing what is trained:
# where it is written, how far it goes, how evaluation is batched and where the data and its
# cache live (the dataset fingerprint, not the folder, says whether the data is the same).
_RESUMABLE_CHANGES = ("out_dir", "epochs", "eval_batch_size")
_DATA_LOCATIONS = ("root", "cache_dir")


@dataclass(frozen=True)
class CellConfig:
    """Everything that defines one (learning rate, seed) cell and where its files go.

    Every value is checked on creation; a bad one raises ``InputError`` naming the field, the
    rule, the value and the command-line flag that sets it.

    Args:
        data: Dataset root and split (see ``DataConfig``).
        learning_rate: The optimizer's learning rate; finite and > 0.
        seed: Seeds weight initialisation and batch order; an int >= 0.
        out_dir: Folder for ``result.json``, ``predictions.csv``, ``history.csv`` and the
            checkpoint; a later run with ``resume`` continues from what is there.
        epochs: Epochs to train. Defaults to `60`, as in the paper.
        batch_size: Training batch size. Defaults to `8`, as in the paper.
        eval_batch_size: Batch size of validation and test predictions; results do not depend
            on it. Defaults to `64`.
        image_size: Side of the square input in pixels; >= 75 for Inception V3, >= 32 for
            the small CNN. Defaults to `224`.
        optimizer: ``"adam"``, ``"sgd"`` or ``"rmsprop"``. Defaults to `"adam"`.
        weights: ``"imagenet"``, ``"none"`` or the path of a no-top base weights file.
            Defaults to `"imagenet"`, as Keras does.
        model: ``"inception_v3"`` or ``"small_cnn"``. Defaults to `"inception_v3"`.
        test_weights: Evaluate the test part with the ``"last"`` epoch's weights or the
            ``"best"`` validation epoch's. Defaults to `"last"`, as a plain Keras run gives.
        deterministic: Switch on the backend's deterministic kernels (slower on GPU).
            Defaults to `True`.
        mixed_precision: Compute in float16 with float32 weights and a float32 sigmoid head,
            the loss scaled by Keras; faster on GPUs, but results differ from float32 ones.
            Defaults to `False`, as in the paper.
        jit_compile: Compile the training and prediction steps with XLA: ``"auto"`` (Keras's
            choice: on under JAX, on under TensorFlow only with a GPU and without
            ``deterministic``), ``True`` or ``False``. Defaults to `"auto"`.
    """

    data: DataConfig
    learning_rate: float
    seed: int
    out_dir: str
    epochs: int = 60
    batch_size: int = 8
    eval_batch_size: int = 64
    image_size: int = 224
    optimizer: str = "adam"
    weights: str = "imagenet"
    model: str = "inception_v3"
    test_weights: str = "last"
    deterministic: bool = True
    mixed_precision: bool = False
    jit_compile: bool | str = "auto"

    def __post_init__(self) -> None:
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
            raise InputError(f"learning_rate (--lr) must be a finite number > 0; got {lr!r}")
        if lr <= 0:
            raise InputError(f"learning_rate (--lr) must be > 0, e.g. 0.001; got {lr!r}")
        _check_int("seed (--seed)", self.seed, 0)
        _check_int("epochs (--epochs)", self.epochs, 1)
        _check_int("batch_size (--batch-size)", self.batch_size, 1)
        _check_int("eval_batch_size (--eval-batch-size)", self.eval_batch_size, 1)
        _check_choice("model (--model)", self.model, MODELS)
        _check_choice("optimizer (--optimizer)", self.optimizer, OPTIMIZERS)
        _check_choice("test_weights (--test-weights)", self.test_weights, TEST_WEIGHTS)
        minimum = MIN_IMAGE_SIZE[self.model]
        _check_int(f"image_size (--image-size) of {self.model}", self.image_size, minimum)
        if self.weights == "imagenet" and self.model != "inception_v3":
            raise InputError(
                f"weights (--weights): model {self.model} has no ImageNet weights; got "
                "'imagenet'; use --weights none or the path of a weights file"
            )
        if self.weights not in ("imagenet", "none") and not os.path.isfile(self.weights):
            raise InputError(
                "weights (--weights) must be 'imagenet', 'none' or an existing weights file; "
                f"got {self.weights!r}; check the path"
            )
        if not isinstance(self.deterministic, bool):
            raise InputError(f"deterministic must be true or false; got {self.deterministic!r}")
        if not isinstance(self.mixed_precision, bool):
            raise InputError(
                f"mixed_precision must be true or false; got {self.mixed_precision!r}"
            )
        if self.jit_compile != "auto" and not isinstance(self.jit_compile, bool):
            raise InputError(
                f'jit_compile must be "auto", true or false; got {self.jit_compile!r}'
            )
        if not self.out_dir:
            raise InputError("out_dir (--out) must name a folder; got an empty value")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that ``from_dict`` turns back into an equal config."""
        values = dataclasses.asdict(self)
        values["data"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in values["data"].items()
        }
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellConfig:
        data = dict(values["data"])
        if data.get("ratios") is not None:
            data["ratios"] = tuple(data["ratios"])
        return cls(**{**values, "data": DataConfig(**data)})

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must share with this config to be resumed by it."""
        values = self.to_dict()
        for name in _RESUMABLE_CHANGES:
            values.pop(name)
        for name in _DATA_LOCATIONS:
            values["data"].pop(name)
        return values


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
