"""Train, validate, checkpoint and test one grid cell: the unit of work of a study."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer._atomic import write_atomic
from trainer._checkpoint import (
    Checkpoint,
    CheckpointWriter,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from trainer._config import CellConfig
from trainer._determinism import deterministic_xla
from trainer._errors import ConfigError, InputError
from trainer._metrics import binary_metrics, sigmoid, validation_metrics

if TYPE_CHECKING:
    import keras

    from trainer._dataset import Dataset, Part
    from trainer._feed import BatchFeed

_logger = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, Any]], bool]
"""Called after each epoch as ``hook(epoch, logs)``; returning True stops training."""
SavedHook = Callable[[int, dict[str, Any]], None]
"""Called as ``on_saved(epoch, logs)`` once an epoch's checkpoint is on disk (see train_cell)."""

CHECKPOINT_FILE = "checkpoint.npz"
BEST_WEIGHTS_FILE = "best.npz"
RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.csv"
# The validation part's predictions from the same tested weights: the export chooses a
# secondary threshold on them (Youden's J), never on the test part.
VAL_PREDICTIONS_FILE = "val_predictions.csv"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
_XLA_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


@dataclass(frozen=True)
class CellResult:
    """What one cell produced. Epochs are numbered from 1.

    ``history`` holds one dict per epoch with the keys of ``HISTORY_COLUMNS``; ``final`` and
    ``best`` hold ``epoch``, ``val_loss`` and ``val_accuracy`` of the last epoch and of the best
    one (highest ``val_accuracy``, then lowest ``val_loss``, then earliest). ``test`` holds the
    test metrics of ``BinaryMetrics`` plus ``weights`` and ``epoch`` of the weights tested.
    ``trainable_parameters`` counts the weights training changes (2,049 for a frozen Inception
    V3: the head's). ``seconds`` is the wall time of this call (a resumed cell counts only its
    own part).
    """

    config: CellConfig
    history: tuple[dict[str, Any], ...]
    final: dict[str, Any]
    best: dict[str, Any]
    test: dict[str, Any]
    epochs_run: int
    diverged: bool
    diverged_epoch: int | None
    trainable_parameters: int
    predictions_path: str
    checkpoint_path: str
    environment: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; NaN and infinite numbers (undefined values) become None."""
        return json_safe(
            {
                "config": self.config.to_dict(),
                "history": list(self.history),
                "final": self.final,
                "best": self.best,
                "test": self.test,
                "epochs_run": self.epochs_run,
                "diverged": self.diverged,
                "diverged_epoch": self.diverged_epoch,
                "trainable_parameters": self.trainable_parameters,
                "predictions_path": self.predictions_path,
                "checkpoint_path": self.checkpoint_path,
                "environment": self.environment,
                "seconds": self.seconds,
            }
        )


def use_deterministic_xla() -> None:
    """Ask XLA for deterministic GPU kernels; JAX reads this only when it first starts.

    Call it before ``import keras`` under the JAX backend (the CLI does); ``train_cell`` calls it
    too, which is enough when JAX has not touched a device yet. On CPU JAX is deterministic.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _XLA_DETERMINISM_FLAG not in flags.split():
        os.environ["XLA_FLAGS"] = f"{flags} {_XLA_DETERMINISM_FLAG}".strip()


@dataclass(frozen=True, eq=False)
class CellSetup:
    """What a cell trains: its data, its compiled model in its seeded initial state, and the
    training feed whose batch order follows the cell's seed (call ``set_epoch`` before each
    epoch)."""

    dataset: Dataset
    model: keras.Model
    train_feed: BatchFeed


def set_up_cell(
    config: CellConfig, check_data: Callable[[Dataset], None] | None = None
) -> CellSetup:
    """Load the data and build the model and feed of one cell, seeded as the cell's config says.

    ``train_cell`` and the learning-rate range test both start here, so the range test sees the
    very model, weights, optimizer and batch order that a grid cell trains.

    Args:
        config: The cell; the optimizer is compiled with its ``learning_rate``.
        check_data: Called with the loaded dataset before Keras is imported (seconds), so that
            a check on the data (``train_cell``'s checkpoint check) answers at once.
            Defaults to `None`.

    Raises:
        InputError: A bad dataset, a weights file that does not fit, or unreachable ImageNet
            weights; or what ``check_data`` raises.
        ConfigError: ``config.backend`` is not the Keras backend loaded in this process.
    """
    from trainer._compile_cache import use_persistent_compilation_cache
    from trainer._dataset import load_dataset
    from trainer._model import build_model
    from trainer._weights import fetch_imagenet_weights

    if config.weights == "imagenet":
        fetch_imagenet_weights()  # before the dataset, whose first cache build takes minutes
    dataset = load_dataset(config.data, config.image_size)
    if check_data is not None:
        check_data(dataset)
    # Keras (seconds to import) loads only now, so the checks above answer at once.
    import keras

    from trainer._feed import BatchFeed

    if keras.backend.backend() != config.backend:
        raise ConfigError(
            "backend",
            f'"{keras.backend.backend()}", the Keras backend loaded in this process',
            config.backend,
            f"set KERAS_BACKEND={config.backend} before Keras is imported",
        )
    use_persistent_compilation_cache()  # JAX: later cells load the programs the first compiled
    _share_gpu_memory()
    seed_and_determinism(config.seed, config.deterministic)
    model = build_model(
        config.model,
        config.image_size,
        config.weights,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        mixed_precision=config.mixed_precision,
        jit_compile=config.jit_compile,
        freeze_base=config.freeze_base,
        steps_per_execution=config.steps_per_execution,
    )
    if config.jit_compile is True and not model.jit_compile:
        _logger.warning(
            "cell %s: jit_compile true was turned off by Keras (TensorFlow's op determinism "
            "excludes XLA); set deterministic false to compile",
            _cell_name(config),
        )
    train_feed = BatchFeed(dataset.train, config.batch_size, shuffle=True, seed=config.seed)
    return CellSetup(dataset=dataset, model=model, train_feed=train_feed)


def train_cell(
    config: CellConfig,
    hook: EpochHook | None = None,
    *,
    on_saved: SavedHook | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> CellResult:
    """Train one cell, validating and checkpointing after every epoch, then test it.

    Each epoch is one ``model.fit`` over a feed whose batch order is a pure function of
    (seed, epoch), followed by a prediction of the validation part at ``eval_batch_size``;
    the validation metrics are computed here so they do not depend on batching. Then the
    checkpoint is snapshotted and written in the background, and ``hook(epoch, logs)`` runs
    and may stop training. A loss that
    turns NaN or infinite ends training as a result (``diverged``), checked at the end of each
    epoch. The tested weights (``test_weights``) predict the test part; ``predictions.csv``,
    ``history.csv`` and ``result.json`` go into ``config.out_dir``.

    Args:
        config: The cell.
        hook: Called after each epoch with its number and logs (the history row plus
            ``diverged``); returning True stops training. Defaults to `None`.
        on_saved: Called with the same arguments once that epoch's checkpoint is on disk, in
            epoch order, on a thread of its own, while the next epoch trains: a report made
            there (the study's) never claims an epoch a crash could still lose, and the
            checkpoint write (a second or so for Inception V3) stays off the training path.
            Its errors are raised from the epoch after, or at the end. A resumed cell first
            reports each epoch its checkpoint holds, so the caller sees the whole history.
            Defaults to `None`.
        resume: Continue from the checkpoint in ``out_dir`` if one is there (``epochs`` may
            grow); one of another cell is set aside and the cell starts afresh. Without it an
            existing checkpoint is an error.
            Defaults to `False`.
        verbose: Show a progress bar per epoch on stdout. Defaults to `False`.

    Raises:
        InputError: A bad dataset, a weights file that does not fit, unreachable ImageNet
            weights, or a checkpoint in ``out_dir`` that cannot be resumed.
    """
    from trainer._environment import environment_record

    started = time.perf_counter()
    out = Path(config.out_dir)
    checkpoint_path = out / CHECKPOINT_FILE
    previous: Checkpoint | None = None

    def check_checkpoint(dataset: Dataset) -> None:
        nonlocal previous
        previous = _resumable(checkpoint_path, config, dataset.fingerprint, resume)

    cell = set_up_cell(config, check_checkpoint)
    model, dataset = cell.model, cell.dataset
    training_files = (checkpoint_path, out / BEST_WEIGHTS_FILE)
    misfit = None if previous is None else previous.misfit(model)
    if misfit is not None:  # of this cell's key, not of this model (a Keras with other variables)
        set_aside(training_files, f"is not of this model ({misfit})")
        previous = None
    lost = None if previous is None else _lost_best_weights(out, config, previous.state)
    if lost is not None:
        set_aside(training_files, lost)
        previous = None
    if previous is None and training_files[1].exists():  # never tested as this run's
        set_aside(training_files[1:], "is left without its checkpoint")
    state: dict[str, Any] = {
        "resume_key": config.resume_key(),
        "fingerprint": dataset.fingerprint,
        "history": [],
        "best": None,
        "diverged": False,
        "diverged_epoch": None,
    }
    if previous is not None:
        previous.restore(model)
        state.update(previous.state)
        _logger.info("cell %s: resuming after epoch %d", _cell_name(config), _done(state))
        if config.test_weights == "best" and state["best"] is not None:
            _complete_best_weights(out, model, state)

    # Writes and the reports that follow them overlap the next epoch; both wait at the end.
    with CheckpointWriter() as writer, _Reports(on_saved) as reports:
        for row in state["history"]:  # a resumed cell's epochs: on disk, told to this caller
            diverged = row["epoch"] == state["diverged_epoch"]
            reports.after(_ON_DISK, row["epoch"], {**row, "diverged": diverged})
        _run_epochs(
            model, cell.train_feed, dataset.val, config, state, writer, hook, reports, verbose
        )

    test = _test(model, dataset.test, config, state)
    trainable = sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)
    predictions_path = out / PREDICTIONS_FILE
    _write_predictions(predictions_path, dataset.test, test.pop("logits"))
    val_logits = _predict(model, dataset.val, config)  # of the tested weights
    _write_predictions(out / VAL_PREDICTIONS_FILE, dataset.val, val_logits)
    _write_history(out / HISTORY_FILE, state["history"])
    result = CellResult(
        config=config,
        history=tuple(state["history"]),
        final={k: state["history"][-1][k] for k in ("epoch", "val_loss", "val_accuracy")},
        best=state["best"],
        test=test,
        epochs_run=_done(state),
        diverged=state["diverged"],
        diverged_epoch=state["diverged_epoch"],
        trainable_parameters=trainable,
        predictions_path=str(predictions_path),
        checkpoint_path=str(checkpoint_path),
        environment={
            **environment_record(
                seed=config.seed,
                fingerprint=dataset.fingerprint,
                deterministic=config.deterministic,
            ),
            # What the backend really ran: Keras may turn jit_compile off.
            "jit_compile": bool(model.jit_compile),
            "dtype_policy": model.get_layer(config.model).dtype_policy.name,
        },
        seconds=time.perf_counter() - started,
    )
    write_atomic(out / RESULT_FILE, json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return result


def _run_epochs(
    model: keras.Model,
    train_feed: BatchFeed,
    val: Part,
    config: CellConfig,
    state: dict[str, Any],
    writer: CheckpointWriter,
    hook: EpochHook | None,
    reports: _Reports,
    verbose: bool = False,
) -> None:
    """Train from the epoch after ``state``'s last to ``config.epochs``, updating ``state``."""
    out = Path(config.out_dir)
    callbacks = [_progress_bar(config.epochs)] if verbose else []
    for epoch in range(_done(state) + 1, config.epochs + 1):
        if state["diverged"]:
            return
        epoch_started = time.perf_counter()
        train_feed.set_epoch(epoch - 1)
        logs = model.fit(
            train_feed,
            epochs=epoch,
            initial_epoch=epoch - 1,
            shuffle=False,  # Keras would reorder batches with Python's RNG; the feed decides
            verbose=0,
            callbacks=callbacks,
        ).history
        loss, accuracy = float(logs["loss"][-1]), float(logs["accuracy"][-1])
        row = {"epoch": epoch, "loss": loss, "accuracy": accuracy}
        row.update(validation_metrics(val.labels, _predict(model, val, config)))
        if not math.isfinite(loss):
            state["diverged"], state["diverged_epoch"] = True, epoch
        improved = _better(row, state["best"])
        if improved:
            state["best"] = {k: row[k] for k in ("epoch", "val_loss", "val_accuracy")}
        row["seconds"] = time.perf_counter() - epoch_started
        state["history"].append(row)
        written = writer.save(out / CHECKPOINT_FILE, model, state)
        if improved and config.test_weights == "best":
            # After the checkpoint, which then names this epoch as the best: a crash between
            # the two leaves the best weights the checkpoint's own (_complete_best_weights).
            writer.save(out / BEST_WEIGHTS_FILE, model, {"epoch": epoch}, include_optimizer=False)
        logs = {**row, "diverged": state["diverged"]}
        reports.after(written, epoch, logs)
        _logger.info(
            "cell %s epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f%s",
            _cell_name(config), epoch, config.epochs, loss, accuracy, row["val_loss"],
            row["val_accuracy"], " (diverged)" if state["diverged"] else "",
        )  # fmt: skip
        if hook is not None and hook(epoch, logs):
            _logger.info("cell %s: stopped by the hook after epoch %d", _cell_name(config), epoch)
            return


_ON_DISK: Future[None] = Future()
_ON_DISK.set_result(None)


class _Reports:
    """Runs ``on_saved`` for each epoch once its checkpoint is written, in order, off the
    training thread; the first error is raised from the next ``after`` or on leaving."""

    def __init__(self, on_saved: SavedHook | None) -> None:
        self._on_saved = on_saved
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-report")
        self._pending: list[Future[None]] = []

    def after(self, written: Future[None], epoch: int, logs: dict[str, Any]) -> None:
        for done in [report for report in self._pending if report.done()]:
            self._pending.remove(done)
            done.result()
        if self._on_saved is not None:
            on_saved = self._on_saved

            def report() -> None:
                written.result()  # on disk first: a report never claims an epoch a crash loses
                on_saved(epoch, logs)

            self._pending.append(self._pool.submit(report))

    def __enter__(self) -> _Reports:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for report in self._pending:
                report.result()
        finally:
            self._pool.shutdown()


def _resumable(
    path: Path, config: CellConfig, fingerprint: str, resume: bool
) -> Checkpoint | None:
    """The checkpoint to continue from, None to start afresh, or an InputError saying why not."""
    previous = load_checkpoint(path)
    if previous is None:
        return None
    done = _done(previous.state)
    if not resume:
        raise InputError(
            f"out_dir (--out) {path.parent} already holds a checkpoint after epoch {done}; "
            "pass --resume to continue it, or choose another --out"
        )
    saved = CellConfig.stored_resume_key(previous.state.get("resume_key", {}))
    wanted = config.resume_key()
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if previous.state.get("fingerprint") != fingerprint:
        differ.append("dataset fingerprint")
    if differ:
        set_aside(
            (path, path.with_name(BEST_WEIGHTS_FILE)),
            f"is of another cell (differs in {', '.join(differ)})",
        )
        return None
    return previous


def _share_gpu_memory() -> None:
    """Under TensorFlow, take GPU memory as needed rather than all of it at start, within the
    cap ``$LRSTUDY_TF_GPU_MEMORY_MB`` when the launcher set one.

    Several workers then fit on one GPU (without a cap, one that grows first can starve the
    others), and ``nvidia-smi`` shows what each really uses. It works only before TensorFlow
    first touches the GPU; later (the next cell of a worker) the setting made then stays. JAX
    reads its memory settings from the environment at start, which ``lrstudy launch`` sets.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    from trainer._devices import GPU_MEMORY_ENV

    cap = os.environ.get(GPU_MEMORY_ENV)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if cap:
                limit = [tf.config.LogicalDeviceConfiguration(memory_limit=int(cap))]
                tf.config.set_logical_device_configuration(gpu, limit)
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is initialised already; its first setting holds
            return


def seed_and_determinism(seed: int, deterministic: bool | str) -> None:
    """Start a fresh Keras session seeded with ``seed``, with deterministic kernels if asked.

    TensorFlow's op determinism, once on, stays on in the process. Under JAX this sets the XLA
    flag of ``use_deterministic_xla`` where XLA has the kernels (``deterministic_xla``),
    effective only if JAX has not started yet.
    """
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    if not deterministic:
        return
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif keras.backend.backend() == "jax" and deterministic_xla(deterministic):
        use_deterministic_xla()


def _predict(model: keras.Model, part: Part, config: CellConfig) -> np.ndarray:
    """The model's logits of PNEUMONIA for the part's images, in order."""
    from trainer._feed import BatchFeed

    if len(part) == 0:
        return np.zeros(0, dtype=np.float32)
    feed = BatchFeed(part, config.eval_batch_size, shuffle=False)
    return np.asarray(model.predict(feed, verbose=0), dtype=np.float32).reshape(-1)


def _test(
    model: keras.Model, part: Part, config: CellConfig, state: dict[str, Any]
) -> dict[str, Any]:
    """Test metrics of the configured weights; the logits ride along for the CSV."""
    epoch = state["history"][-1]["epoch"]
    if config.test_weights == "best":
        best = load_checkpoint(Path(config.out_dir) / BEST_WEIGHTS_FILE)
        epoch = state["best"]["epoch"]
        if best is None or best.state.get("epoch", epoch) != epoch:
            raise InputError(
                f"test_weights best: {config.out_dir}/{BEST_WEIGHTS_FILE} is missing, damaged or "
                f"not of the best epoch {epoch}; rerun the cell without --resume or use "
                "--test-weights last"
            )
        best.restore(model)
    logits = _predict(model, part, config)
    metrics = binary_metrics(part.labels, sigmoid(logits), scores=logits).to_dict()
    return {"weights": config.test_weights, "epoch": epoch, **metrics, "logits": logits}


def _best_epoch_saved(out: Path) -> int | None:
    """The epoch ``best.npz`` holds; None without one, -1 for one written before it said."""
    best = load_checkpoint(out / BEST_WEIGHTS_FILE)
    return None if best is None else best.state.get("epoch", -1)


def _lost_best_weights(out: Path, config: CellConfig, state: dict[str, Any]) -> str | None:
    """Why the checkpoint cannot be resumed without its best epoch's weights, or None.

    ``best.npz`` is written just after its epoch's checkpoint: a crash between the two leaves
    it behind only when the best epoch is the checkpoint's last, whose weights the resume
    restores (``_complete_best_weights``). Any other mismatch lost the best weights for good.
    """
    best = state.get("best")
    if config.test_weights != "best" or best is None or best["epoch"] == _done(state):
        return None
    saved = _best_epoch_saved(out)
    if saved in (best["epoch"], -1):  # -1: a file of an older trainer, written in the old order
        return None
    held = "is missing" if saved is None else f"holds epoch {saved}"
    return f"lacks the weights of its best epoch {best['epoch']} ({BEST_WEIGHTS_FILE} {held})"


def _complete_best_weights(out: Path, model: keras.Model, state: dict[str, Any]) -> None:
    """On resume, make ``best.npz`` hold the checkpoint's best epoch when a crash left it
    behind: that is then the checkpoint's last epoch, whose weights were just restored."""
    saved, best = _best_epoch_saved(out), state["best"]["epoch"]
    if saved not in (best, -1):
        save_checkpoint(out / BEST_WEIGHTS_FILE, model, {"epoch": best}, include_optimizer=False)


def _better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher val_accuracy wins, then lower val_loss (NaN loses); a tie keeps the earlier epoch."""

    def key(values: dict[str, Any]) -> tuple[float, float]:
        loss = values["val_loss"]
        return (values["val_accuracy"], -loss if math.isfinite(loss) else -math.inf)

    return best is None or key(row) > key(best)


def _done(state: dict[str, Any]) -> int:
    return state["history"][-1]["epoch"] if state["history"] else 0


def _cell_name(config: CellConfig) -> str:
    return f"{config.model} lr={config.learning_rate:g} seed={config.seed}"


def _write_predictions(path: Path, part: Part, logits: np.ndarray) -> None:
    """``path,label,probability,logit`` per image; repr keeps every digit.

    The logit is kept because float64 rounds the probability of a logit beyond about 36.7 to
    exactly 1 (and below -745 to 0): such images would tie, and their order is what ROC AUC
    and DeLong's test rank.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "logit"])
    probabilities = sigmoid(logits)
    for name, label, p, z in zip(part.paths, part.labels, probabilities, logits, strict=True):
        writer.writerow([name, int(label), repr(float(p)), repr(float(z))])
    write_atomic(path, text.getvalue())


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(
            {k: repr(row[k]) if isinstance(row[k], float) else row[k] for k in HISTORY_COLUMNS}
        )
    write_atomic(path, text.getvalue())


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None and NumPy scalars as Python numbers, so that
    ``json.dumps(..., allow_nan=False)`` and every Optuna storage accept it."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _progress_bar(epochs: int) -> keras.callbacks.Callback:
    """Keras's progress bar, numbered against the cell's epochs rather than one fit call's."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
            self.bar = keras.utils.Progbar(self.params["steps"], unit_name="step")

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.bar.update(batch + 1, values=list((logs or {}).items()))

    return EpochProgress()
