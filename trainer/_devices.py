"""What the backend can compute on: a worker placed on a GPU must find one, never fall back."""

from __future__ import annotations

import os

from trainer._errors import InputError

GPU_MEMORY_ENV = "LRSTUDY_TF_GPU_MEMORY_MB"
"""A TensorFlow worker's GPU memory cap in MiB, set by ``lrstudy launch --per-gpu K``."""

# The CUDA builds of each backend; pyproject's extras `gpu` and `jax-cuda` install them.
CUDA_BUILDS = {
    "tensorflow": "pip install 'tensorflow[and-cuda]' (lrstudy's extra gpu)",
    "jax": "pip install 'jax[cuda12]' (lrstudy's extra jax-cuda)",
}


def require_gpu(slot: str) -> None:
    """Refuse to go on when the Keras backend sees no GPU although this worker was given one.

    A CPU-only TensorFlow or JAX build (what a plain ``pip install`` gives) would otherwise
    train Inception V3 on the CPU for 60 epochs per cell while the GPU idles, and exit 0.

    Args:
        slot: The GPU the launcher gave this worker (its ``CUDA_VISIBLE_DEVICES``).

    Raises:
        InputError: the backend lists no GPU; the message names the install that fixes it.
    """
    import keras

    backend = keras.backend.backend()
    try:
        if keras.distribution.list_devices("gpu"):
            return
    except RuntimeError:  # A CPU-only jaxlib has no "gpu" platform to list at all.
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    fix = CUDA_BUILDS.get(backend, f"install a CUDA build of {backend}")
    raise InputError(
        f"this worker was given GPU {slot} (CUDA_VISIBLE_DEVICES={visible}) but the {backend} "
        f"backend sees no GPU, so it would train on the CPU; fix: {fix}, or run CPU workers "
        "with --workers N"
    )
