"""Data, model, training and metrics for one grid cell; knows nothing of Optuna."""

from trainer._atomic import write_atomic
from trainer._cache import PREPROCESS_VERSION, default_cache_dir
from trainer._check import DataReport, PartCounts, check_dataset
from trainer._checkpoint import Checkpoint, CheckpointWriter, load_checkpoint, save_checkpoint
from trainer._config import TEST_WEIGHTS, CellConfig, TrainConfig, train_keys
from trainer._dataset import (
    DataConfig,
    Dataset,
    Part,
    check_layout,
    load_dataset,
    parse_ratios,
)
from trainer._environment import environment_record
from trainer._errors import ConfigError, InputError
from trainer._lr_find import LR_FIND_FILE, LrFindResult, LrFindRow, find_learning_rate
from trainer._lr_find import write_csv as write_lr_find_csv
from trainer._metrics import TEST_METRICS, BinaryMetrics, binary_metrics, validation_metrics
from trainer._model import MIN_IMAGE_SIZE, MODELS, OPTIMIZERS, build_base, build_model
from trainer._patients import CLASS_NAMES, patient_id
from trainer._scan import PART_NAMES, IgnoredFolder, ImageRecord, ScanResult, scan
from trainer._split import PAPER_COUNTS, SPLITS, split_records
from trainer._train import (
    HISTORY_COLUMNS,
    CellResult,
    CellSetup,
    EpochHook,
    json_safe,
    seed_and_determinism,
    set_up_cell,
    train_cell,
    use_deterministic_xla,
)

__all__ = [
    "CLASS_NAMES",
    "HISTORY_COLUMNS",
    "LR_FIND_FILE",
    "MIN_IMAGE_SIZE",
    "MODELS",
    "OPTIMIZERS",
    "PAPER_COUNTS",
    "PART_NAMES",
    "PREPROCESS_VERSION",
    "SPLITS",
    "TEST_METRICS",
    "TEST_WEIGHTS",
    "BatchFeed",
    "BinaryMetrics",
    "CellConfig",
    "CellResult",
    "CellSetup",
    "Checkpoint",
    "CheckpointWriter",
    "ConfigError",
    "DataConfig",
    "DataReport",
    "Dataset",
    "EpochHook",
    "IgnoredFolder",
    "ImageRecord",
    "InputError",
    "LrFindResult",
    "LrFindRow",
    "Part",
    "PartCounts",
    "ScanResult",
    "TrainConfig",
    "binary_metrics",
    "build_base",
    "build_model",
    "check_dataset",
    "check_layout",
    "default_cache_dir",
    "environment_record",
    "find_learning_rate",
    "json_safe",
    "load_checkpoint",
    "load_dataset",
    "parse_ratios",
    "patient_id",
    "save_checkpoint",
    "scan",
    "seed_and_determinism",
    "set_up_cell",
    "split_records",
    "train_cell",
    "train_keys",
    "use_deterministic_xla",
    "validation_metrics",
    "write_atomic",
    "write_lr_find_csv",
]


def __getattr__(name: str) -> object:
    # BatchFeed subclasses a Keras class, and importing Keras takes seconds: load it on first
    # use, so that `lrstudy --help`, the data commands and their decode processes stay quick.
    if name == "BatchFeed":
        from trainer._feed import BatchFeed

        return BatchFeed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
