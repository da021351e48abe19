"""The batch feed: batch contents, the per-epoch order contract, and real Keras training."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import DataConfig, InputError, load_dataset

keras = pytest.importorskip("keras")
from trainer import BatchFeed  # noqa: E402  (imports Keras)

SIZE = 16


@pytest.fixture
def part(make_dataset, cache_dir):
    written = make_dataset(parts={"train": (11, 14), "val": (3, 3), "test": (3, 3)})
    return load_dataset(
        DataConfig(str(written.root), split="kaggle", cache_dir=cache_dir), SIZE
    ).train


def _epoch(feed) -> tuple[np.ndarray, np.ndarray]:
    batches = [feed[i] for i in range(len(feed))]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def test_unshuffled_batches_follow_the_part(part) -> None:
    feed = BatchFeed(part, 8, shuffle=False)
    assert len(feed) == 4  # 25 images: 8 + 8 + 8 + 1
    x, y = feed[3]
    assert x.shape == (1, SIZE, SIZE, 3) and x.dtype == np.uint8 and y.dtype == np.float32
    images, labels = _epoch(feed)
    assert (images == part.images[part.indices]).all()
    assert (labels == part.labels).all()
    with pytest.raises(IndexError):
        feed[4]


def test_each_epoch_is_a_seeded_permutation_and_resumable(part) -> None:
    feed = BatchFeed(part, 8, shuffle=True, seed=3)
    seen = []
    for epoch in range(3):
        feed.set_epoch(epoch)
        images, labels = _epoch(feed)
        rows = [_row_of(part, image) for image in images]
        assert sorted(rows) == sorted(part.indices.tolist())  # each image once
        assert (labels == part.labels[[part.indices.tolist().index(r) for r in rows]]).all()
        seen.append(rows)
    assert seen[0] != seen[1] != seen[2]
    resumed = BatchFeed(part, 8, shuffle=True, seed=3, epoch=2)
    assert [_row_of(part, image) for image in _epoch(resumed)[0]] == seen[2]
    other_seed = BatchFeed(part, 8, shuffle=True, seed=4, epoch=2)
    assert [_row_of(part, image) for image in _epoch(other_seed)[0]] != seen[2]


def test_keras_epoch_hooks_change_nothing(part) -> None:
    feed = BatchFeed(part, 8, shuffle=True, epoch=5)
    before = _epoch(feed)[1]
    for _ in range(3):  # Keras calls these on resets, validation and peeks, not once an epoch
        feed.on_epoch_begin()
        feed.on_epoch_end()
    assert feed.epoch == 5
    assert (_epoch(feed)[1] == before).all()


@pytest.mark.parametrize("per_epoch_fit", [False, True])
def test_fit_sees_the_epochs_it_trains(part, per_epoch_fit: bool) -> None:
    class Recording(BatchFeed):
        def __getitem__(self, index):
            served.append((self.epoch, index))
            return super().__getitem__(index)

    served: list[tuple[int, int]] = []
    feed = Recording(part, 8, shuffle=True, seed=1)
    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
         keras.layers.Dense(1, activation="sigmoid")]
    )  # fmt: skip
    model.compile(optimizer="adam", loss="binary_crossentropy")
    if per_epoch_fit:  # the trainer's way: one fit per epoch after set_epoch
        for epoch in (1, 2, 3):
            feed.set_epoch(epoch)
            model.fit(feed, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0)
    else:  # a plain multi-epoch fit, resumed at epoch 1
        callbacks = [feed.epoch_callback()]
        model.fit(feed, initial_epoch=1, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
    assert feed.epoch == 3
    for epoch in (1, 2, 3):
        assert {i for e, i in served if e == epoch} == set(range(len(feed)))
        assert len([i for e, i in served if e == epoch]) >= len(feed)
    # Before training, Keras peeks at a few batches (to build the model, or TensorFlow's
    # tensor specs) in whatever order the feed had: those are never trained on.
    first = [e for e, _ in served].index(1)
    assert {e for e, _ in served[:first]} <= {0} and {e for e, _ in served[first:]} == {1, 2, 3}


def test_bad_batch_size_or_empty_part_is_an_input_error(part) -> None:
    with pytest.raises(InputError, match="batch_size must be a positive integer; got 0"):
        BatchFeed(part, 0, shuffle=False)
    empty = type(part)("test", part.images, part.indices[:0], part.labels[:0], ())
    with pytest.raises(InputError, match="test part holds no image"):
        BatchFeed(empty, 8, shuffle=False)


def _row_of(part, image: np.ndarray) -> int:
    matches = [row for row in part.indices if (part.images[row] == image).all()]
    assert len(matches) == 1
    return int(matches[0])
