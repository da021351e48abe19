"""Data pipeline speed: the parallel cache build and a cached epoch, against their baselines.

    .venv/bin/python benchmarks/data_pipeline.py [DATA] [--limit N] [--image-size 224]

DATA defaults to ../shared/data/chest_xray_224 next to the repository. In one run it measures
1. the cache build (decode + resize, one process per core) against the same decoding in a
   single process, in images/s;
2. one epoch of shuffled batches of 8 from the cache (BatchFeed) against one epoch of
   keras.utils.image_dataset_from_directory, which decodes and resizes every file every epoch.
The ratios come last. The cache lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer import CLASS_NAMES, DataConfig, scan
from trainer._cache import open_pool_cache
from trainer._dataset import Part
from trainer._decode import load_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="Dataset folder.")
    parser.add_argument("--limit", type=int, default=None, help="Use every k-th image so that "
                        "about this many remain (default: all).")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    DataConfig(args.data)  # the same argument checks as the service
    records = scan(args.data).records
    if args.limit and args.limit < len(records):
        records = records[:: -(-len(records) // args.limit)]
    root, size = str(Path(args.data).resolve()), args.image_size
    print(f"data: {root}, {len(records)} images, {size} px, batch {args.batch_size}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, workers {args.workers}")  # fmt: skip

    start = time.perf_counter()
    for record in records:
        load_image(os.path.join(root, record.path), size)
    single = len(records) / (time.perf_counter() - start)
    print(f"single-process decode + resize: {single:8.1f} images/s")

    with tempfile.TemporaryDirectory(prefix="lrstudy-bench-") as cache_dir:
        start = time.perf_counter()
        cache = open_pool_cache(root, records, size, cache_dir, workers=args.workers)
        parallel = len(records) / (time.perf_counter() - start)
        print(f"cache build ({args.workers} processes):   {parallel:8.1f} images/s")

        import keras  # after the build: its decode processes need not inherit Keras

        from trainer import BatchFeed

        part = Part(
            name="train",
            images=cache.images,
            indices=np.arange(len(records), dtype=np.int64),
            labels=np.array([record.label for record in records], dtype=np.uint8),
            paths=cache.paths,
        )
        feed = BatchFeed(part, args.batch_size, shuffle=True, seed=0)
        start = time.perf_counter()
        for index in range(len(feed)):
            feed[index]
        cached = len(records) / (time.perf_counter() - start)
        print(f"epoch from the cache (BatchFeed):  {cached:8.1f} images/s")

        decoded = _keras_epoch(keras, root, records, size, args.batch_size)
        print(f"epoch re-decoding the files (keras.utils.image_dataset_from_directory): "
              f"{decoded:8.1f} images/s")  # fmt: skip

    print(f"ratio: parallel build / single process = {parallel / single:.2f} "
          f"({args.workers} processes)")  # fmt: skip
    print(f"ratio: cached epoch / re-decoding epoch = {cached / decoded:.1f}")
    return 0


def _keras_epoch(keras, root: str, records, size: int, batch_size: int) -> float:
    """images/s of one epoch of the Keras directory loader over the same files."""
    with tempfile.TemporaryDirectory(prefix="lrstudy-bench-files-") as folder:
        # The loader reads a folder per class: link the chosen files into one.
        for name in CLASS_NAMES:
            os.mkdir(os.path.join(folder, name))
        for i, record in enumerate(records):
            target = os.path.join(
                folder, CLASS_NAMES[record.label], f"{i}_{Path(record.path).name}"
            )
            os.symlink(os.path.join(root, record.path), target)
        dataset = keras.utils.image_dataset_from_directory(
            folder, labels="inferred", label_mode="binary", class_names=list(CLASS_NAMES),
            image_size=(size, size), batch_size=batch_size, shuffle=True, seed=0, verbose=False,
        )  # fmt: skip
        start = time.perf_counter()
        count = sum(int(labels.shape[0]) for _, labels in dataset)
        return count / (time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(main())
