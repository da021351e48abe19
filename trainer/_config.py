"""The plain configs of training: the protocol every cell shares, and one grid cell.

Each ``TrainConfig`` field carries its own check and help text, so the spec, the presets, the
commented TOML of ``lrstudy init`` and the flags of ``lrstudy train`` all derive from it:
adding a training key takes the field (with its check and help), and its use in the trainer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from trainer import _checks
from trainer._dataset import DataConfig
from trainer._determinism import IF_AVAILABLE
from trainer._errors import ConfigError
from trainer._model import MIN_IMAGE_SIZE, MODELS, OPTIMIZERS

TEST_WEIGHTS = ("last", "best")
BACKENDS = ("tensorflow", "jax")
# What a spec or checkpoint stored before a key existed meant by leaving it out: the values that
# reproduce the old behaviour (old studies split patients by person number alone, merging
# personN_bacteria with personN_virus). Filled in before such a spec or checkpoint is checked.
KEYS_ADDED_LATER: dict[str, dict[str, Any]] = {
    "train": {"freeze_base": False, "backend": "tensorflow", "steps_per_execution": 1},
    "data": {"patient_key": "person"},
}
# Fields that may change between a run and its resumption without changing what is trained:
# where it is written, how far it goes, how evaluation is batched and where the data and its
# cache live (the dataset fingerprint, not the folder, says whether the data is the same).
_RESUMABLE_CHANGES = ("out_dir", "epochs", "eval_batch_size", "steps_per_execution")
_DATA_LOCATIONS = ("root", "cache_dir")


def _jit_compile(key: str, value: Any) -> bool | str:
    if value != "auto" and not isinstance(value, bool):
        raise ConfigError(key, '"auto", true or false', value)
    return value


def _deterministic(key: str, value: Any) -> bool | str:
    if value != IF_AVAILABLE and not isinstance(value, bool):
        raise ConfigError(key, f'true, false or "{IF_AVAILABLE}"', value)
    return value


def _key(default: Any, check: _checks.Check, help: str, *, axis: bool = True) -> Any:
    """A training key: its default, its check, one line of help, and whether it may be a grid
    axis (a key that changes only how fast a cell runs is none, nor the backend and the
    deterministic kernels, which a worker process sets once for every cell it runs)."""
    return field(default=default, metadata={"check": check, "help": help, "axis": axis})


@dataclass(frozen=True)
class TrainConfig:
    """The training protocol of a study: what every cell shares but its learning rate and seed.

    The defaults are Kim & Ye (2022)'s protocol. Each value is checked on creation; a bad one
    raises ``ConfigError`` naming the field.

    Args:
        model: ``"inception_v3"`` or ``"small_cnn"``. Defaults to `"inception_v3"`.
        weights: ``"imagenet"``, ``"none"`` or the path of a no-top base weights file.
            Defaults to `"imagenet"`, as Keras does.
        freeze_base: Train only the Dense head on a frozen base (its batch normalisation in
            inference mode), the Keras transfer-learning guide's pattern; the paper does not say
            which it did. Defaults to `False`: every layer trains, as Keras builds Inception V3.
        image_size: Side of the square input in pixels; >= 75 for Inception V3, >= 32 for
            the small CNN. Defaults to `224`.
        epochs: Epochs to train. Defaults to `60`.
        batch_size: Training batch size. Defaults to `8`.
        eval_batch_size: Batch size of validation and test predictions; results do not depend
            on it. Defaults to `64`.
        optimizer: ``"adam"``, ``"sgd"`` or ``"rmsprop"``. Defaults to `"adam"`.
        test_weights: Evaluate the test part with the ``"last"`` epoch's weights or the
            ``"best"`` validation epoch's. Defaults to `"last"`, as a plain Keras run gives.
        deterministic: Switch on the backend's deterministic kernels (slower on GPU):
            ``True``, ``False``, or ``"if-available"``, which under JAX trains without them
            where this jaxlib has none for a max-pool gradient (a worker probes at start).
            Defaults to `True`.
        mixed_precision: Compute in float16 with float32 weights and a float32 logit head,
            the loss scaled by Keras; faster on GPUs, but results differ from float32 ones.
            Defaults to `False`.
        jit_compile: Compile the training and prediction steps with XLA: ``"auto"`` (Keras's
            choice: on under JAX, on under TensorFlow only with a GPU and without
            ``deterministic``), ``True`` or ``False``. Defaults to `"auto"`.
        backend: The Keras backend, ``"tensorflow"`` or ``"jax"``: part of the protocol, since
            the two give different numbers; a cell refuses to train under another one.
            Defaults to `"tensorflow"`.
        steps_per_execution: Training steps per call into the compiled step (Keras's
            ``compile`` argument). Keras-TF syncs host and device after every call, which at
            batch 8 leaves a GPU waiting; results are the same for any value. Defaults to `1`
            (no GPU measurement has chosen another yet; docs/performance.md).
    """

    model: str = _key(
        "inception_v3",
        _checks.choice(MODELS),
        '"inception_v3" (the paper) or "small_cnn" (three conv blocks, for smoke runs)',
    )
    weights: str = _key(
        "imagenet",
        _checks.string,
        '"imagenet" (downloaded by Keras once), "none", or a local weights file',
    )
    freeze_base: bool = _key(
        False,
        _checks.boolean,
        "true: train the head alone on a frozen base; false: fine-tune every layer",
    )
    image_size: int = _key(
        224, _checks.integer(1), "pixels per side; Inception V3 needs at least 75"
    )
    epochs: int = _key(60, _checks.integer(1), "epochs of training")
    batch_size: int = _key(8, _checks.integer(1), "training batch size")
    eval_batch_size: int = _key(
        64, _checks.integer(1), "evaluation only; results do not depend on it"
    )
    optimizer: str = _key("adam", _checks.choice(OPTIMIZERS), '"adam", "sgd" or "rmsprop"')
    test_weights: str = _key(
        "last",
        _checks.choice(TEST_WEIGHTS),
        'test the "last" or the "best" (by val_accuracy) epoch\'s weights',
    )
    deterministic: bool | str = _key(
        True,
        _deterministic,
        'reproducible to the last digit (slower on GPUs); "if-available": where XLA has the '
        "kernels",
        axis=False,
    )
    mixed_precision: bool = _key(
        False,
        _checks.boolean,
        "float16 compute, float32 head: faster on GPUs, changes results (docs/performance.md)",
    )
    jit_compile: bool | str = _key(
        "auto",
        _jit_compile,
        '"auto" (Keras decides), true or false: XLA compilation of the steps',
        axis=False,
    )
    backend: str = _key(
        "tensorflow",
        _checks.choice(BACKENDS),
        '"tensorflow" or "jax": the Keras backend every worker runs (KERAS_BACKEND)',
        axis=False,
    )
    steps_per_execution: int = _key(
        1,
        _checks.integer(1),
        "training steps per call into the compiled step: fewer host round trips at batch 8 "
        "(TensorFlow); results do not depend on it",
        axis=False,
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(TrainConfig):
            item.metadata["check"](item.name, getattr(self, item.name))
        minimum = MIN_IMAGE_SIZE[self.model]
        if self.image_size < minimum:
            raise ConfigError(
                "image_size", f"an integer >= {minimum} for {self.model}", self.image_size
            )
        if self.weights == "imagenet" and self.model != "inception_v3":
            raise ConfigError(
                "weights",
                f'"none" or a weights file: {self.model} has no ImageNet weights',
                self.weights,
            )
        if self.weights not in ("imagenet", "none") and not os.path.isfile(self.weights):
            raise ConfigError(
                "weights", '"imagenet", "none" or an existing weights file', self.weights,
                "check the path",
            )  # fmt: skip


def train_keys(*, axes_only: bool = False) -> dict[str, dataclasses.Field[Any]]:
    """The training keys by name, in the protocol's order (only grid-axis keys on request)."""
    return {
        item.name: item
        for item in dataclasses.fields(TrainConfig)
        if item.metadata["axis"] or not axes_only
    }


@dataclass(frozen=True, kw_only=True)
class CellConfig(TrainConfig):
    """One grid cell: the protocol, its learning rate and seed, its data and its folder.

    Args:
        data: Dataset root and split (see ``DataConfig``).
        learning_rate: The optimizer's learning rate; finite and > 0.
        seed: Seeds weight initialisation and batch order; an int >= 0.
        out_dir: Folder for ``result.json``, ``predictions.csv``, ``history.csv`` and the
            checkpoint; a later run with ``resume`` continues from what is there.
        **protocol: The ``TrainConfig`` fields.
    """

    data: DataConfig
    learning_rate: float
    seed: int
    out_dir: str

    def __post_init__(self) -> None:
        _checks.positive_number("learning_rate", self.learning_rate)
        _checks.integer(0)("seed", self.seed)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ConfigError("out_dir", "a folder path", self.out_dir)
        super().__post_init__()

    @classmethod
    def of(
        cls,
        protocol: TrainConfig,
        *,
        data: DataConfig,
        learning_rate: float,
        seed: int,
        out_dir: str,
        **changes: Any,
    ) -> CellConfig:
        """The cell of ``protocol`` with these values (``changes``: training keys to override)."""
        values = {item.name: getattr(protocol, item.name) for item in dataclasses.fields(protocol)}
        values.update(changes)
        return cls(data=data, learning_rate=learning_rate, seed=seed, out_dir=out_dir, **values)

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

    @staticmethod
    def stored_resume_key(stored: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's saved resume key as ``resume_key`` gives it today: keys added since
        filled with the values the checkpoint ran with, changes that resume freely left out."""
        values = {**KEYS_ADDED_LATER["train"], **stored}
        values["data"] = {**KEYS_ADDED_LATER["data"], **stored.get("data", {})}
        return {key: value for key, value in values.items() if key not in _RESUMABLE_CHANGES}

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must share with this config to be resumed by it."""
        values = self.to_dict()
        for name in _RESUMABLE_CHANGES:
            values.pop(name)
        for name in _DATA_LOCATIONS:
            values["data"].pop(name)
        return values
