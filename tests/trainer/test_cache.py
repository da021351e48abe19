"""The image cache: pixels, reuse, invalidation, bad files, parallel build, one build for many."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

from trainer import DataConfig, InputError, load_dataset, scan
from trainer._cache import cache_files, cache_key, open_pool_cache
from trainer._decode import decode_error, find_undecodable, load_image

SIZE = 32


def _open(root, cache_dir, *, size=SIZE, workers=None):
    scanned = scan(str(root))
    return open_pool_cache(scanned.root, scanned.records, size, cache_dir, workers=workers)


def test_load_image_gives_square_uint8_rgb_with_grey_as_three_equal_channels(tmp_path) -> None:
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))  # 30 x 50 gradient
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "rgb.jpeg", quality=95)
    png = load_image(str(tmp_path / "grey.png"), 20)
    jpeg = load_image(str(tmp_path / "rgb.jpeg"), 20)
    for image in (png, jpeg):
        assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all()
    assert png[0, 0, 0] < 20 and png[0, -1, 0] > 220  # stretched, the gradient kept
    assert np.abs(png.astype(int) - jpeg.astype(int)).max() <= 6  # same picture either way


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path) -> None:
    deep = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (40, 1))
    Image.fromarray(deep).save(tmp_path / "deep.png")
    image = load_image(str(tmp_path / "deep.png"), 40)
    assert image[0, 0, 0] < 10 and image[0, -1, 0] > 245 and image[0, 20, 0] > 100


def test_big_jpeg_decoded_in_draft_mode_stays_deterministic_and_close(tmp_path) -> None:
    rng = np.random.default_rng(0)
    big = (np.add.outer(np.arange(1200), np.arange(1600)) % 256).astype(np.uint8)
    big = np.clip(big.astype(int) + rng.normal(0, 5, big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpeg", quality=95)
    first = load_image(str(tmp_path / "big.jpeg"), 75)
    assert (load_image(str(tmp_path / "big.jpeg"), 75) == first).all()
    with Image.open(tmp_path / "big.jpeg") as image:
        full = np.asarray(image.convert("RGB").resize((75, 75), Image.Resampling.LANCZOS))
    assert np.abs(first.astype(int) - full.astype(int)).mean() < 8


def test_build_stores_each_image_then_reuses_the_cache(make_dataset, cache_dir) -> None:
    written = make_dataset(stray=True)
    first = _open(written.root, cache_dir)
    assert first.built and first.bad == {}
    assert first.images.shape == (len(written.labels), SIZE, SIZE, 3)
    for row, path in enumerate(first.paths):
        assert (first.images[row] == load_image(str(written.root / path), SIZE)).all()
    assert not first.images.flags.writeable
    assert sorted(os.listdir(cache_dir)) == sorted(
        os.path.basename(path) for path in cache_files(cache_dir, first.key, SIZE)
    )  # no temporary file left behind
    again = _open(written.root, cache_dir)
    assert not again.built and again.path == first.path
    assert (np.asarray(again.images) == np.asarray(first.images)).all()


def test_a_changed_file_or_size_gives_a_new_cache(make_dataset, cache_dir) -> None:
    written = make_dataset()
    first = _open(written.root, cache_dir)
    assert _open(written.root, cache_dir, size=24).path != first.path
    changed = written.root / sorted(written.labels)[0]
    Image.new("L", (50, 40), 255).save(changed, "PNG" if changed.suffix == ".png" else "JPEG")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = _open(written.root, cache_dir)
    assert second.built and second.key != first.key
    row = second.paths.index(sorted(written.labels)[0])
    assert second.images[row].min() > 240  # the new white picture, not the old one


def test_parallel_build_equals_the_serial_one(make_dataset, tmp_path) -> None:
    written = make_dataset()
    serial = _open(written.root, str(tmp_path / "serial"), workers=1)
    parallel = _open(written.root, str(tmp_path / "parallel"), workers=2)
    assert parallel.built and parallel.key == serial.key
    assert (np.asarray(parallel.images) == np.asarray(serial.images)).all()


def test_undecodable_image_is_reported_refused_or_skipped(make_dataset, cache_dir) -> None:
    written = make_dataset(corrupt=True)
    bad = written.corrupt[0]
    assert decode_error(str(written.root / bad)) is not None
    assert decode_error(str(written.root / sorted(written.labels)[0])) is None
    with pytest.raises(InputError, match=f"1 image.*{bad}.*--skip-bad"):
        load_dataset(DataConfig(str(written.root), cache_dir=cache_dir), SIZE)
    dataset = load_dataset(DataConfig(str(written.root), cache_dir=cache_dir, skip_bad=True), SIZE)
    used = [path for part in (dataset.train, dataset.val, dataset.test) for path in part.paths]
    assert sorted(used) == sorted(written.labels)  # everything but the bad file
    assert not dataset.cache_built  # the refused call had built the cache already


def test_an_unreadable_file_is_an_input_error_and_never_cached_as_bad(
    make_dataset, cache_dir, tmp_path
) -> None:
    written = make_dataset()
    scanned = scan(str(written.root))
    gone = written.root / scanned.records[0].path
    gone.rename(tmp_path / "away")  # after the scan: a share that lost it, a disk that failed
    with pytest.raises(InputError, match=r"cannot be read \(No such file or directory\)"):
        open_pool_cache(scanned.root, scanned.records, SIZE, cache_dir)
    with pytest.raises(InputError, match="cannot be read"):
        find_undecodable(scanned.root, [record.path for record in scanned.records])
    (tmp_path / "away").rename(gone)
    back = open_pool_cache(scanned.root, scanned.records, SIZE, cache_dir)
    assert back.built and back.bad == {}


def test_load_dataset_parts_are_aligned_views_of_one_cache(make_dataset, cache_dir) -> None:
    written = make_dataset()
    config = DataConfig(str(written.root), split="kaggle", cache_dir=cache_dir)
    dataset = load_dataset(config, SIZE)
    assert dataset.image_size == SIZE and dataset.cached_images == len(written.labels)
    for part in (dataset.train, dataset.val, dataset.test):
        assert part.images is dataset.train.images  # one memmap for every part
        assert part.indices.dtype == np.int64 and part.labels.dtype == np.uint8
        assert len(part) == len(part.labels) == len(part.paths)
        for row, label, path in zip(part.indices, part.labels, part.paths, strict=True):
            assert written.labels[path] == label and written.parts[path] == part.name
            assert (part.images[row] == load_image(str(written.root / path), SIZE)).all()
    # Another split of the same files reuses the cache and gets another fingerprint.
    other = load_dataset(DataConfig(str(written.root), split="paper", cache_dir=cache_dir), SIZE)
    assert not other.cache_built and other.cache_path == dataset.cache_path
    assert other.fingerprint != dataset.fingerprint
    assert load_dataset(config, SIZE).fingerprint == dataset.fingerprint


def test_the_fingerprint_is_the_data_seen_not_its_folder_or_mtimes(
    make_dataset, cache_dir, tmp_path
) -> None:
    written = make_dataset()
    config = DataConfig(str(written.root), split="kaggle", cache_dir=cache_dir)
    dataset = load_dataset(config, SIZE)
    copy = shutil.copytree(written.root, tmp_path / "elsewhere")
    for path in copy.rglob("*"):
        os.utime(path, ns=(1, 1))
    moved = load_dataset(dataclasses.replace(config, root=str(copy)), SIZE)
    assert moved.cache_built  # new mtimes: decoded again, yet the same data
    assert moved.fingerprint == dataset.fingerprint
    assert load_dataset(config, SIZE + 1).fingerprint != dataset.fingerprint
    shown = dataset.test.paths[0]
    other = next(
        p
        for p in dataset.train.paths
        if (copy / p).stat().st_size != (copy / shown).stat().st_size
    )
    (copy / shown).write_bytes((copy / other).read_bytes())
    edited = load_dataset(dataclasses.replace(config, root=str(copy)), SIZE)
    assert edited.fingerprint != dataset.fingerprint  # another file (size) in the test part


def test_a_build_removes_the_array_a_killed_build_left(make_dataset, cache_dir) -> None:
    written = make_dataset()
    scanned = scan(str(written.root))
    npy = cache_files(cache_dir, cache_key(scanned.records, SIZE), SIZE)[0]
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    os.makedirs(cache_dir)
    leftover = os.path.join(
        cache_dir, f".{os.path.basename(npy)}.{socket.gethostname()}.{killed.pid}.tmp"
    )
    with open(leftover, "wb") as file:
        file.write(b"\0" * 4096)  # at 224 px the real one is 880 MB
    assert _open(written.root, cache_dir).built
    assert not os.path.exists(leftover)


def test_three_processes_preparing_together_build_once(make_dataset, cache_dir, tmp_path) -> None:
    written = make_dataset(parts={"train": (20, 30), "val": (5, 5), "test": (5, 5)})
    scanned = scan(str(written.root))
    lock_path = cache_files(cache_dir, cache_key(scanned.records, SIZE), SIZE)[2]
    os.makedirs(cache_dir)
    command = [sys.executable, "-m", "study", "data", "prepare", str(written.root),
               "--image-size", str(SIZE), "--cache-dir", cache_dir]  # fmt: skip
    logs = [tmp_path / f"stderr{i}.txt" for i in range(3)]
    # Hold the build lock until all three wait on it, so that they really run together.
    with FileLock(lock_path):
        processes = []
        for log in logs:
            with open(log, "w") as stderr:
                processes.append(
                    subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            "waiting for another process" in log.read_text() for log in logs
        ):
            assert all(process.poll() is None for process in processes), "one did not wait"
            time.sleep(0.05)
    stdout = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], stdout
    assert all("waiting for another process" in log.read_text() for log in logs)
    assert sum(out.count("built:") for out in stdout) == 1, stdout
    assert sum(out.count("reused:") for out in stdout) == 2, stdout
    assert len({out.splitlines()[0] for out in stdout}) == 1  # the same cache path
