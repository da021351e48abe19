"""Data, model, training and metrics for one grid cell; knows nothing of Optuna."""

from trainer._cache import PREPROCESS_VERSION, default_cache_dir
from trainer._check import DataReport, PartCounts, check_dataset
from trainer._dataset import DataConfig, Dataset, Part, load_dataset, parse_ratios
from trainer._errors import InputError
from trainer._patients import CLASS_NAMES, patient_id
from trainer._scan import PART_NAMES, IgnoredFolder, ImageRecord, ScanResult, scan
from trainer._split import PAPER_COUNTS, SPLITS, split_records

__all__ = [
    "CLASS_NAMES",
    "PAPER_COUNTS",
    "PART_NAMES",
    "PREPROCESS_VERSION",
    "SPLITS",
    "BatchFeed",
    "DataConfig",
    "DataReport",
    "Dataset",
    "IgnoredFolder",
    "ImageRecord",
    "InputError",
    "Part",
    "PartCounts",
    "ScanResult",
    "check_dataset",
    "default_cache_dir",
    "load_dataset",
    "parse_ratios",
    "patient_id",
    "scan",
    "split_records",
]


def __getattr__(name: str) -> object:
    # BatchFeed subclasses a Keras class, and importing Keras takes seconds: load it on first
    # use, so that `lrstudy --help`, the data commands and their decode processes stay quick.
    if name == "BatchFeed":
        from trainer._feed import BatchFeed

        return BatchFeed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
