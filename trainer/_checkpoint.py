"""Per-epoch checkpoints that a crash cannot corrupt: written whole or not at all, and verified.

A checkpoint is one ``.npz`` file (readable with plain ``numpy.load``) holding the model's
variables (weights and batch-norm statistics), the optimizer's variables (step count, moments),
the Python and NumPy RNG states, and a JSON ``state`` entry with whatever the trainer needs to
continue (config, epoch, history, ...). A SHA-256 over every entry is stored alongside: a file
cut short or altered on disk fails to load and is reported and ignored, never half-used.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import random
import zipfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from trainer._atomic import remove_leftovers, temporary_path

if TYPE_CHECKING:
    import keras

_logger = logging.getLogger(__name__)

_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint file holds."""

    state: dict[str, Any]
    model_variables: tuple[np.ndarray, ...]
    optimizer_variables: tuple[np.ndarray, ...]
    python_rng: tuple[Any, ...] | None
    numpy_rng: tuple[Any, ...] | None

    def restore(self, model: keras.Model) -> None:
        """Put the saved variables into ``model`` (built and compiled like the saved one).

        The optimizer is built first if needed, so its slots exist before they are assigned.
        RNG states are restored too when the checkpoint has them.

        Raises:
            ValueError: The variables do not fit ``model`` (``misfit``); nothing is assigned.
        """
        problem = self.misfit(model)
        if problem is not None:
            raise ValueError(f"checkpoint {problem}")
        for variable, value in zip(model.variables, self.model_variables, strict=True):
            variable.assign(value)
        if self.optimizer_variables:  # built by misfit
            for variable, value in zip(
                model.optimizer.variables, self.optimizer_variables, strict=True
            ):
                variable.assign(value)
        if self.python_rng is not None:
            random.setstate(self.python_rng)
        if self.numpy_rng is not None:
            np.random.set_state(self.numpy_rng)

    def misfit(self, model: keras.Model) -> str | None:
        """Why these variables do not fit ``model`` (their number or a shape), or None.

        Checked before any is assigned, so a checkpoint of another architecture (say, of a
        Keras release that adds or drops a variable) is set aside whole, not half restored.
        Variables are matched by position: same-shape variables in another order would pass,
        and Keras's automatic layer names, which change with every model a process builds,
        cannot tell them apart either.
        """
        groups = [("model", list(model.variables), self.model_variables)]
        if self.optimizer_variables:
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            groups.append(("optimizer", list(model.optimizer.variables), self.optimizer_variables))
        for what, variables, values in groups:
            if len(variables) != len(values):
                return f"holds {len(values)} {what} variables but the model has {len(variables)}"
            for variable, value in zip(variables, values, strict=True):
                if tuple(variable.shape) != value.shape:
                    return (
                        f"{what} variable {variable.path} has shape {value.shape}, expected "
                        f"{tuple(variable.shape)}"
                    )
        return None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: keras.Model,
    state: dict[str, Any],
    *,
    include_optimizer: bool = True,
) -> None:
    """Write ``model``'s variables (and optimizer's) with ``state`` atomically to ``path``.

    The file appears under its name only once complete and synced (temp file + rename), so a
    reader sees the previous checkpoint or the new one, never a mix.
    """
    _write(Path(path), _snapshot(model, state, include_optimizer))


class CheckpointWriter:
    """Saves like ``save_checkpoint`` but writes in a background thread, in order.

    Copying the variables is quick and happens in the caller; hashing and writing an Inception
    V3 checkpoint (260 MB with Adam's moments) takes about a second, which then overlaps the
    next epoch instead of adding to it. At most two writes wait at a time. A failed write
    raises from the next ``save`` or from ``wait``; leaving the ``with`` block waits for all.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: list[Future[None]] = []

    def save(
        self,
        path: str | os.PathLike[str],
        model: keras.Model,
        state: dict[str, Any],
        *,
        include_optimizer: bool = True,
    ) -> Future[None]:
        """Snapshot now, write in the background; the future is done once the file is on disk."""
        entries = _snapshot(model, state, include_optimizer)
        while len(self._pending) > 1:
            self._pending.pop(0).result()
        written = self._pool.submit(_write, Path(path), entries)
        self._pending.append(written)
        return written

    def wait(self) -> None:
        """Block until every checkpoint saved so far is on disk."""
        while self._pending:
            self._pending.pop(0).result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def _snapshot(
    model: keras.Model, state: dict[str, Any], include_optimizer: bool
) -> dict[str, np.ndarray]:
    """Copies of everything a checkpoint holds, taken now; training may go on afterwards."""
    entries: dict[str, np.ndarray] = {}
    for i, variable in enumerate(model.variables):
        entries[f"model/{i:05d}"] = _owned_copy(variable)
    if include_optimizer and model.optimizer is not None and model.optimizer.built:
        for i, variable in enumerate(model.optimizer.variables):
            entries[f"optimizer/{i:05d}"] = _owned_copy(variable)
    python_rng = random.getstate()
    # numpy's stubs type the no-argument call as the legacy=False dict; the default is
    # legacy=True, which for the global MT19937 state gives this tuple.
    numpy_rng = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    meta = {
        "format": _FORMAT,
        "state": state,
        "python_rng": [python_rng[0], list(python_rng[1]), python_rng[2]],
        "numpy_rng": [numpy_rng[0], *(v for v in numpy_rng[2:])],
    }
    entries["rng/numpy_keys"] = np.asarray(numpy_rng[1], dtype=np.uint32)
    entries["meta"] = np.frombuffer(json.dumps(meta, allow_nan=True).encode(), dtype=np.uint8)
    return entries


def _owned_copy(variable: keras.Variable) -> np.ndarray:
    """The variable's value in memory of its own: JAX donates (reuses) the buffers of the state
    to the next training step, and the background writer reads the copy during that step."""
    value = variable.value  # a tf.Variable has .numpy(); a jax.Array converts directly
    return np.array(value.numpy() if hasattr(value, "numpy") else np.asarray(value), copy=True)


def _write(target: Path, entries: dict[str, np.ndarray]) -> None:
    entries = {**entries, "checksum": np.frombuffer(_digest(entries).encode(), dtype=np.uint8)}
    temporary = temporary_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        try:
            with open(temporary, "wb") as file:
                # mypy matches **entries against savez's allow_pickle: bool; no key is that.
                np.savez(file, **cast("dict[str, Any]", entries))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        # np.savez writes to a file object, so its errors name no file (a full disk says only
        # "No space left on device"); the trial's error must say which file failed.
        raise OSError(
            error.errno, f"cannot write checkpoint {target}: {error.strerror or error}"
        ) from error
    _sync_directory(target.parent)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none or it is damaged (logged)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {name: archive[name] for name in archive.files}
        stored = entries.pop("checksum").tobytes().decode()
        if stored != _digest(entries):
            raise ValueError("checksum mismatch")
        meta = json.loads(entries.pop("meta").tobytes().decode())
        if meta["format"] != _FORMAT:
            raise ValueError(f"format {meta['format']} is not {_FORMAT}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        _logger.warning("ignoring damaged checkpoint %s: %s", path, error)
        return None
    version, internal, gauss = meta["python_rng"]
    numpy_name, position, has_gauss, cached = meta["numpy_rng"]
    return Checkpoint(
        state=meta["state"],
        model_variables=_series(entries, "model/"),
        optimizer_variables=_series(entries, "optimizer/"),
        python_rng=(version, tuple(internal), gauss),
        numpy_rng=(numpy_name, entries["rng/numpy_keys"], position, has_gauss, cached),
    )


def set_aside(paths: Sequence[str | os.PathLike[str]], reason: str) -> Path:
    """Move those of a cell's files ``paths`` that exist into a sibling folder, and log why.

    A checkpoint that must not be resumed (it is of another cell), and the best weights that
    go with it, are still someone's work: they go to ``<folder>.set-aside-<UTC time>/``,
    beside the folder they were in, and the cell starts afresh instead of failing.

    Args:
        paths: Files of one folder, the first the one ``reason`` is about.
        reason: Why, as "is of another cell (...)".

    Returns:
        The folder they are in now.
    """
    sources = [Path(path).absolute() for path in paths if os.path.exists(path)]
    folder = Path(paths[0]).absolute().parent
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = folder.with_name(f"{folder.name}.set-aside-{stamp}")
    target.mkdir(parents=True)
    for source in sources:
        os.replace(source, target / source.name)
    _logger.warning(
        "%s %s: moved %s to %s, starting afresh",
        Path(paths[0]).absolute(), reason, " and ".join(s.name for s in sources), target,
    )  # fmt: skip
    return target


def _series(entries: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, ...]:
    return tuple(entries[name] for name in sorted(entries) if name.startswith(prefix))


def _digest(entries: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every entry, in name order."""
    sha = hashlib.sha256()
    for name in sorted(entries):
        array = np.ascontiguousarray(entries[name])
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
