"""Local worker processes for a study: slots (which GPU each sees), GPU advice, the supervisor.

It knows nothing of Optuna: a worker is a command line, and the study in the database decides
which cell each worker trains.
"""

from study.launch._slots import (
    GPU_SLOT_ENV,
    LAUNCHER_ENV,
    Slot,
    find_gpus,
    gpu_pool,
    parse_smi_indices,
    plan_lines,
    plan_slots,
)
from study.launch._supervisor import LaunchSummary, WorkerOutcome, follow_launcher, launch
from study.launch._usage import GpuSample, UsageWatch, parse_smi_usage, underuse_advice

__all__ = [
    "GPU_SLOT_ENV",
    "LAUNCHER_ENV",
    "GpuSample",
    "LaunchSummary",
    "Slot",
    "UsageWatch",
    "WorkerOutcome",
    "find_gpus",
    "follow_launcher",
    "gpu_pool",
    "launch",
    "parse_smi_indices",
    "parse_smi_usage",
    "plan_lines",
    "plan_slots",
    "underuse_advice",
]
