"""Shared fixtures: small but realistic chest X-ray folders, and a 5,856-name pool.

``write_dataset`` (also as the ``make_dataset`` fixture) writes real image files the way the
Kaggle dataset names and stores them: JPEG and PNG, grey (L) and RGB, odd sizes, the three
naming schemes with several images per patient, and on request an undecodable image and
stray files. PNEUMONIA images carry a bright blotch, so a small network can learn the labels.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.waiting import closed_port
from trainer import ImageRecord

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Images per patient, counted on the real names in shared/data/chest_xray_224 (5,232 files):
# {images per patient: number of patients}.
NORMAL_GROUPS = {1: 1149, 2: 13, 3: 54, 4: 3}
PNEUMONIA_GROUPS = {
    1: 636, 2: 562, 3: 191, 4: 85, 5: 43, 6: 44, 7: 29, 8: 19, 9: 12, 10: 6, 11: 5, 12: 4,
    13: 1, 14: 2, 16: 1, 18: 1, 30: 1,
}  # fmt: skip

DEFAULT_PARTS = {"train": (12, 16), "val": (6, 8), "test": (6, 8)}


@dataclass(frozen=True)
class WrittenDataset:
    """What ``write_dataset`` wrote, for tests to compare with what the code finds."""

    root: Path
    labels: dict[str, int]  # decodable image (path relative to root) -> label
    patients: dict[str, str]  # decodable image -> patient id its name encodes
    parts: dict[str, str]  # decodable image -> part it was written for
    corrupt: tuple[str, ...]  # undecodable images
    ignored: tuple[str, ...]  # stray and hidden files


def write_dataset(
    root: Path,
    *,
    parts: dict[str, tuple[int, int]] | None = None,
    layout: str = "kaggle",
    image_size: int = 40,
    corrupt: bool = False,
    stray: bool = False,
    unnamed: bool = False,
    seed: int = 0,
) -> WrittenDataset:
    """Write (NORMAL, PNEUMONIA) images per part under ``root``.

    Args:
        root: Folder to create.
        parts: {"train" | "val" | "test": (normal, pneumonia)}; in the flat layout the counts
            are pooled. Defaults to 12/16, 6/8 and 6/8.
        layout: "kaggle" (ROOT/part/CLASS) or "flat" (ROOT/CLASS). Defaults to "kaggle".
        image_size: Typical side of the written images (they vary around it). Defaults to 40.
        corrupt: Add one truncated JPEG in train/PNEUMONIA. Defaults to False.
        stray: Add a text file, a .DS_Store and a macOS "._" file. Defaults to False.
        unnamed: Add a NORMAL image named outside the three schemes (its own patient) to the
            first part. Defaults to False.
        seed: Seed of names, sizes and pixels. Defaults to 0.
    """
    rng = random.Random(seed)
    parts = DEFAULT_PARTS if parts is None else parts
    labels: dict[str, int] = {}
    patients: dict[str, str] = {}
    folders: dict[str, str] = {}
    numbers = iter(range(100, 10_000))  # patient numbers, never repeated across parts
    for part, counts in parts.items():
        prefix = f"{part}/" if layout == "kaggle" else ""
        for label, count in enumerate(counts):
            for relative, patient in _names(label, count, numbers, rng):
                path = f"{prefix}{('NORMAL', 'PNEUMONIA')[label]}/{relative}"
                _write_image(root / path, label, image_size, rng)
                labels[path], patients[path], folders[path] = label, patient, part
    for part in parts if layout == "kaggle" else [""]:
        for name in ("NORMAL", "PNEUMONIA"):
            (root / part / name).mkdir(parents=True, exist_ok=True)
    if unnamed:
        first = next(iter(parts))
        path = ("" if layout == "flat" else f"{first}/") + "NORMAL/scan 2018-03-01.png"
        _write_image(root / path, 0, image_size, rng)
        labels[path], patients[path], folders[path] = 0, path, first
    corrupted: list[str] = []
    if corrupt:
        path = ("train/" if layout == "kaggle" else "") + "PNEUMONIA/person9999_bacteria_1.jpeg"
        buffer = io.BytesIO()
        Image.fromarray(_pixels(1, image_size, image_size, rng)).save(buffer, "JPEG")
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        corrupted.append(path)
    ignored: list[str] = []
    if stray:
        base = "train/" if layout == "kaggle" else ""
        for path, content in (
            (f"{base}NORMAL/notes.txt", b"scanned on 2018-01-01\n"),
            (f"{base}NORMAL/.DS_Store", b"\0\0\0\1Bud1"),
            (f"{base}PNEUMONIA/._person1_bacteria_1.jpeg", b"\0\5\26\7"),
        ):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
            ignored.append(path)
    return WrittenDataset(root, labels, patients, folders, tuple(corrupted), tuple(ignored))


def paper_pool(seed: int = 0) -> tuple[ImageRecord, ...]:
    """5,856 names (1,583 NORMAL, 4,273 PNEUMONIA) with the real patient group sizes, as
    records without files: enough for the split, which never decodes."""
    rng = random.Random(seed)
    records = []
    numbers = iter(range(1, 100_000))
    for label, (groups, total) in enumerate(((NORMAL_GROUPS, 1583), (PNEUMONIA_GROUPS, 4273))):
        sizes = [size for size, patients in groups.items() for _ in range(patients)]
        written = 0
        while written < total:
            size = min(rng.choice(sizes), total - written)
            for relative, patient in _group_names(label, size, next(numbers), rng):
                path = f"{('NORMAL', 'PNEUMONIA')[label]}/{relative}"
                records.append(ImageRecord(path=path, label=label, patient=patient))
            written += size
    return tuple(sorted(records, key=lambda record: record.path))


def _names(label: int, count: int, numbers, rng: random.Random):
    """(file name, patient) for ``count`` images in realistic patient groups."""
    written = 0
    while written < count:
        weights = (8, 1, 2) if label == 0 else (3, 3, 2, 1, 1)
        size = min(rng.choices(range(1, len(weights) + 1), weights)[0], count - written)
        yield from _group_names(label, size, next(numbers), rng)
        written += size


def _group_names(label: int, size: int, number: int, rng: random.Random):
    if label == 0:
        patient = f"{rng.choice(['IM', 'NORMAL2-IM'])}-{number:04d}"
        if size == 1:
            yield f"{patient}-0001.{_extension(rng)}", patient
        else:
            for image in range(1, size + 1):
                yield f"{patient}-0001-{image:04d}.{_extension(rng)}", patient
    else:
        kind = rng.choice(["bacteria", "virus"])
        patient = f"person{number}_{kind}"  # the default patient key, "person-type"
        for image in range(size):
            yield f"{patient}_{number * 10 + image}.{_extension(rng)}", patient


def _extension(rng: random.Random) -> str:
    return rng.choices(["jpeg", "png", "jpg", "JPEG"], (6, 2, 1, 1))[0]


def _write_image(path: Path, label: int, size: int, rng: random.Random) -> None:
    width, height = size + rng.randint(-8, 24), size + rng.randint(-8, 16)
    pixels = _pixels(label, width, height, rng)
    image = Image.fromarray(pixels)
    if rng.random() < 0.3:
        image = image.convert("RGB")  # real RGB files exist next to the grey ones
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        image.save(path, "PNG")
    else:
        image.save(path, "JPEG", quality=90)


def _pixels(label: int, width: int, height: int, rng: random.Random) -> np.ndarray:
    """A grey chest-like gradient; PNEUMONIA adds a bright blotch (an 'opacity')."""
    generator = np.random.default_rng(rng.randrange(2**32))
    y, x = np.mgrid[0:height, 0:width]
    pixels = 60 + 80 * np.abs(x / width - 0.5) + generator.normal(0, 8, (height, width))
    if label == 1:
        cy, cx = generator.uniform(0.3, 0.7) * height, generator.uniform(0.3, 0.7) * width
        pixels += 110 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (width / 6) ** 2))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., WrittenDataset]:
    """``write_dataset`` into a fresh folder under tmp_path; same keyword arguments."""
    counter = iter(range(1_000))

    def make(**options) -> WrittenDataset:
        return write_dataset(tmp_path / f"data{next(counter)}", **options)

    return make


@pytest.fixture
def dataset_dir(make_dataset) -> Path:
    """A clean Kaggle-layout dataset of 56 images (train 12/16, val 6/8, test 6/8)."""
    return make_dataset().root


@pytest.fixture
def closed_origin() -> Iterator[str]:
    """An HTTP origin on this machine that refuses connections for the whole test."""
    with closed_port() as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    """A private image cache folder, so tests never touch the user's cache."""
    return str(tmp_path / "cache")


@pytest.fixture
def shared_data() -> Path:
    """The shared real images (chest_xray_224); skipped where absent, except under CI."""
    path = SHARED_DATA / "chest_xray_224"
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the shared real images at {path}")
        pytest.skip(f"the shared real images are absent ({path})")
    return path
