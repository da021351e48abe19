"""Our cell loop against a bare ``model.fit``: training images per second of each, and the ratio.

Both train the same model (same seed) at the same batch size from the same cached images and
validate every epoch at the same evaluation batch size: the bare run with
``model.fit(feed, epochs=E, validation_data=val_feed)``, ours with ``train_cell`` (one ``fit``
per epoch, our validation metrics, a checkpoint per epoch, the study's report after it). It also
runs ``train_cell`` with the report blocking training until the checkpoint is on disk, as it did
before the report moved off the training path (#15), so the per-epoch cost of each is measured in
the same run. The first epoch pays for
graph building and compilation in both, so the rate is taken over epochs 2..E, from the end of
epoch 1 to the end of epoch E. Both run with the same seed and determinism switches; with
``--rounds N`` they alternate N times and the best rate of each counts, which damps the noise
of a shared machine. Goal: ratio >= 0.95.

    .venv/bin/python benchmarks/trainer_overhead.py [DATA] [--model inception_v3]
        [--image-size 75] [--limit-per-class 60] [--epochs 3] [--batch-size 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trainer import (
    CellConfig,
    DataConfig,
    build_model,
    load_dataset,
    seed_and_determinism,
    train_cell,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--image-size", type=int, default=75)
    parser.add_argument("--limit-per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import keras

    with tempfile.TemporaryDirectory() as scratch:
        config = CellConfig(
            data=DataConfig(args.data, split="ratios", limit_per_class=args.limit_per_class),
            learning_rate=1e-3,
            seed=0,
            out_dir=str(Path(scratch) / "cell"),
            epochs=args.epochs,
            batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size,
            image_size=args.image_size,
            model=args.model,
            weights="none",
        )
        dataset = load_dataset(config.data, config.image_size)  # builds the cache once
        n_train = len(dataset.train)
        print(
            f"{keras.backend.backend()} backend, {args.model} at {args.image_size} px, batch "
            f"{args.batch_size}, {n_train} training and {len(dataset.val)} validation images, "
            f"{args.epochs} epochs (rate over epochs 2..{args.epochs})"
        )
        bare, ours, blocking = 0.0, 0.0, 0.0
        for round_ in range(1, args.rounds + 1):
            bare = max(bare, rate := _bare_fit(config, dataset, n_train))
            print(f"round {round_}: bare model.fit {rate:8.1f} images/s")
            shutil.rmtree(config.out_dir, ignore_errors=True)
            ours = max(ours, rate := _our_loop(config, n_train, blocking=False))
            print(f"round {round_}: train_cell     {rate:8.1f} images/s")
            shutil.rmtree(config.out_dir, ignore_errors=True)
            blocking = max(blocking, rate := _our_loop(config, n_train, blocking=True))
            print(f"round {round_}: train_cell, report waiting for the write {rate:8.1f} images/s")
        print(f"bare model.fit: {bare:8.1f} images/s (best of {args.rounds})")
        print(f"train_cell:     {ours:8.1f} images/s (best of {args.rounds})")
        print(f"train_cell, report waiting for the checkpoint write: {blocking:8.1f} images/s")
        print(f"ratio ours/bare: {ours / bare:.3f} (goal >= 0.95)")
        per_epoch = n_train / blocking - n_train / ours
        print(f"checkpoint off the training path saves {per_epoch:.2f} s per epoch here")


def _bare_fit(config: CellConfig, dataset: Any, n_train: int) -> float:
    import keras

    from trainer import BatchFeed

    seed_and_determinism(config.seed, config.deterministic)
    model = build_model(
        config.model,
        config.image_size,
        "none",
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
    )
    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda *_: ends.append(time.perf_counter())
    )
    model.fit(
        BatchFeed(dataset.train, config.batch_size, shuffle=True, seed=config.seed),
        epochs=config.epochs,
        validation_data=BatchFeed(dataset.val, config.eval_batch_size, shuffle=False),
        shuffle=False,
        verbose=0,
        callbacks=[clock],
    )
    return n_train * (config.epochs - 1) / (ends[-1] - ends[0])


def _our_loop(config: CellConfig, n_train: int, *, blocking: bool) -> float:
    """Images/s of train_cell with a study-like report after each checkpoint; ``blocking``
    makes training wait for it, as the report did before it moved off the training path."""
    ends: list[float] = []
    reported = threading.Semaphore(0)

    def clock(epoch: int, logs: dict[str, Any]) -> bool:
        if blocking:
            reported.acquire()  # the epoch's checkpoint is on disk and reported
        ends.append(time.perf_counter())
        return False

    train_cell(config, clock, on_saved=lambda epoch, logs: reported.release())
    return n_train * (config.epochs - 1) / (ends[-1] - ends[0])


if __name__ == "__main__":
    main()
