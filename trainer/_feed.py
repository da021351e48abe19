"""Batches for Keras from the shared image cache: uint8 pixels, a seeded order per epoch."""

from __future__ import annotations

import math

import keras
import numpy as np

from trainer._dataset import Part
from trainer._errors import InputError


class BatchFeed(keras.utils.PyDataset):
    """A backend-neutral feed of (uint8 images, float32 labels) batches from one part.

    Batch ``i`` of epoch ``e`` is a pure function of (part, batch_size, shuffle, seed, e), so a
    resumed run sees exactly the batches an uninterrupted one would. Without ``shuffle`` the
    order is the part's (path) order, which predictions can be aligned with.

    Note:
        The epoch contract: only ``set_epoch(e)`` (or ``epoch=e`` at construction) changes the
        order. Keras's own ``on_epoch_begin``/``on_epoch_end`` hooks are left as no-ops: Keras
        calls them more often than once per epoch (resets, validation, the JAX trainer's
        first peek at a batch), so counting them would drift and break resuming. Either call
        ``set_epoch`` before each ``fit`` of one epoch, or give a multi-epoch ``fit`` the
        callback ``feed.epoch_callback()``, which sets Keras's epoch number (``initial_epoch``
        included).
        Pass ``shuffle=False`` to ``fit``: Keras would otherwise reorder the batches with
        Python's global ``random``. The feed reads in the calling thread (``workers=1``): a
        batch is a memory copy, not worth a worker.

    Args:
        part: The part to feed.
        batch_size: Images per batch; the last batch may be smaller.
        shuffle: Reorder the images every epoch.
        seed: Seed of the order. Defaults to `0`.
        epoch: The epoch of the first pass. Defaults to `0`.
    """

    def __init__(
        self, part: Part, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(
                f"batch_size must be a positive integer; got {batch_size!r}. Use e.g. 8."
            )
        if len(part) == 0:
            raise InputError(
                f'the {part.name} part holds no image; use split "paper" or "ratios", '
                "or a larger limit_per_class."
            )
        self.part = part
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._targets = part.labels.astype(np.float32)
        self.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch whose order the batches follow now."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Serve the batches of ``epoch`` from now on."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer; got {epoch!r}.")
        self._epoch = epoch
        self._order = self._order_of(epoch)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback that makes a multi-epoch ``fit`` call ``set_epoch`` with Keras's epoch."""
        return _SetEpoch(self)

    def __len__(self) -> int:
        return math.ceil(len(self.part) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} is out of range for {len(self)} batches")
        positions = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = self.part.indices[positions]
        images = np.empty((len(rows), *self.part.images.shape[1:]), dtype=np.uint8)
        # Read the memmap in ascending row order (sequential disk access), one copy per image.
        for slot in np.argsort(rows, kind="stable"):
            images[slot] = self.part.images[rows[slot]]
        return images, self._targets[positions]

    def _order_of(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.part))
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.part))


class _SetEpoch(keras.callbacks.Callback):
    # Keras runs callbacks' on_epoch_begin before it starts reading the epoch's batches.
    def __init__(self, feed: BatchFeed) -> None:
        super().__init__()
        self.feed = feed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.feed.set_epoch(epoch)
