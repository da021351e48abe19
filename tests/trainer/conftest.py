"""Fixtures shared by the tests that train cells."""

from __future__ import annotations

import os

import pytest

from tests.conftest import write_dataset
from trainer import DataConfig

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
"""The Keras backend these tests run under (CI runs them under both): a cell's ``backend``."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """56 images in the Kaggle layout (train 28, val 14, test 14) with a private cache, written
    once per test module."""
    root = tmp_path_factory.mktemp("cells")
    write_dataset(root / "data")
    return DataConfig(str(root / "data"), split="kaggle", cache_dir=str(root / "cache"))
