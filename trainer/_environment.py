"""What a result was computed with, so that two results can be compared or reproduced."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("lrstudy", "keras", "tensorflow", "jax", "jaxlib", "numpy", "scikit-learn", "optuna")


def environment_record(
    *, seed: int, fingerprint: str, deterministic: bool | str
) -> dict[str, Any]:
    """Package versions, Keras backend, device, seed, dataset fingerprint and git commit.

    Versions come from installed metadata, so a backend that is not in use is not imported.
    """
    import keras

    backend = keras.backend.backend()
    return {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "backend": backend,
        "device": device_description(backend),
        "host": platform.node(),
        "platform": platform.platform(),
        "seed": seed,
        "deterministic": deterministic,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dataset_fingerprint": fingerprint,
        "git_commit": git_commit(),
    }


def device_description(backend: str) -> str:
    """The accelerator the backend computes on, e.g. ``"gpu: NVIDIA H100 80GB HBM3"``, else CPU."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform}: {device.device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
            names = [d.get("device_name", gpu.name) for d, gpu in zip(details, gpus, strict=True)]
            return "gpu: " + ", ".join(names)
    return f"cpu: {_cpu_name()}"


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back below
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the checkout this code runs from (``+dirty`` if modified), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
