"""The cell's network: a feature base (Inception V3 or a small CNN) under one logit head."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trainer import _checks
from trainer._errors import InputError
from trainer._weights import fetch_imagenet_weights

if TYPE_CHECKING:
    import keras

_logger = logging.getLogger(__name__)

MODELS = ("inception_v3", "small_cnn")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
# Inception V3's smallest input: its stem and reduction blocks shrink 75 px to a 1x1 map.
MIN_IMAGE_SIZE = {"inception_v3": 75, "small_cnn": 32}

# The file and host that `keras.applications.InceptionV3(weights="imagenet")` downloads from.


def build_model(
    model: str,
    image_size: int,
    weights: str,
    *,
    optimizer: str,
    learning_rate: float,
    mixed_precision: bool = False,
    jit_compile: bool | str = "auto",
    freeze_base: bool = False,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Build and compile the network of one cell.

    The input is uint8 images of shape ``(image_size, image_size, 3)``; Inception's own scaling,
    ``x / 127.5 - 1``, is the first layer, so feeds stay uint8 and no preprocessing runs outside
    the graph. The base is global-average pooled and topped by ``Dense(1)`` without activation:
    the model outputs the logit of PNEUMONIA (its probability is the sigmoid of it). Compiled
    with binary cross-entropy from the logit, which stays finite and unclipped where the sigmoid
    saturates and is the same function on every backend, and the accuracy at logit > 0 (p > 0.5).

    Args:
        model: ``"inception_v3"`` (``keras.applications.InceptionV3`` without its top) or
            ``"small_cnn"`` (three conv blocks, for quick runs and tests).
        image_size: Side of the square input in pixels.
        weights: ``"imagenet"`` (Inception V3 only; downloaded by Keras or found in its
            cache), ``"none"`` for random initialisation, or the path of a weights file of the
            *base without top*: the ``_notop.h5`` file Keras downloads, or a ``.weights.h5``
            saved with ``base.save_weights`` from the same base (see ``build_base``).
        optimizer: ``"adam"``, ``"sgd"`` or ``"rmsprop"``.
        learning_rate: The optimizer's learning rate.
        mixed_precision: Build under Keras's ``mixed_float16`` policy (float16 compute,
            float32 weights) with the head in float32, so the logit and the loss keep float32's
            range; Keras then wraps the optimizer in a ``LossScaleOptimizer``.
            Defaults to `False`.
        jit_compile: Passed to ``model.compile``: ``"auto"``, ``True`` or ``False``. Keras
            turns ``True`` into ``False`` (with a warning) where the model cannot be compiled,
            e.g. under TensorFlow with op determinism on. Defaults to `"auto"`.
        steps_per_execution: Training steps per call into the compiled function (Keras's
            ``compile`` argument): fewer host round trips at small batches. Defaults to `1`.
        freeze_base: Train the head alone, as the Keras transfer-learning guide does: the base
            is not trainable and is called with ``training=False``, so its batch normalisation
            keeps the statistics of its weights. Defaults to `False` (every layer trains).
    """
    import keras

    if weights == "imagenet":
        fetch_imagenet_weights()  # once per machine, verified; then Keras downloads nothing
    # The policy is global in Keras; it applies to the layers built here, then is put back.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        base = build_base(model, image_size, weights)
        inputs = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
        x = keras.layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="inception_scaling")(
            inputs
        )
        if freeze_base:
            base.trainable = False
            x = base(x, training=False)
        else:
            x = base(x)
        outputs = keras.layers.Dense(1, dtype="float32", name="pneumonia")(x)
        network = keras.Model(inputs, outputs, name=f"{model}_cell")
    finally:
        keras.config.set_dtype_policy(previous)
    network.compile(
        optimizer=_optimizer(optimizer, learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return network


def build_base(model: str, image_size: int, weights: str = "none") -> keras.Model:
    """The feature extractor alone: float input in [-1, 1], pooled features out.

    Its weights are what a local weights file holds, so ``build_base(...).save_weights(p)``
    writes a file that ``build_model(..., weights=p)`` loads.
    """
    import keras

    _checks.choice(MODELS)("model", model)  # the config's own check, for library callers
    shape = (image_size, image_size, 3)
    if model == "inception_v3":
        base = keras.applications.InceptionV3(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=shape,
            pooling="avg",
        )
    else:  # small_cnn
        base = keras.Sequential(
            [
                keras.Input(shape=shape),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
            ],
            name="small_cnn",
        )
    if weights not in ("imagenet", "none"):
        _load_base_weights(base, weights)
    return base


def _load_base_weights(base: keras.Model, path: str) -> None:
    try:
        base.load_weights(path)
    except (OSError, ValueError) as error:
        raise InputError(
            f"weights: cannot load {path!r} into {base.name} ({_first_line(error)}); give "
            'the weights file of the same base (no top) at the same image size, or "none"'
        ) from error


def _first_line(error: Exception) -> str:
    """Keras's load errors span many lines; our messages are one."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def _optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    import keras

    classes = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    _checks.choice(OPTIMIZERS)("optimizer", name)  # the config's own check, for library callers
    return classes[name](learning_rate=learning_rate)
