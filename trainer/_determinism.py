"""Whether JAX may ask XLA for deterministic GPU kernels here, decided once per process.

``train.deterministic`` under JAX adds ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``.
Some XLA releases have no deterministic kernel for a max-pool gradient (select-and-scatter over
overlapping windows, as Inception V3's 3x3 stride-2 pools are) and then refuse to compile every
cell. A worker finds out at its start, in a child process (XLA reads its flags once), instead
of failing every cell it claims.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from trainer._errors import InputError

_logger = logging.getLogger(__name__)

IF_AVAILABLE = "if-available"
FLAG = "--xla_gpu_deterministic_ops=true"
# Inception V3 at 224 px: its first max pool takes 109 x 109 x 64 maps at batch 8.
_SHAPE = (8, 109, 109, 64)
_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
from jax import lax
def loss(x):
    pooled = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
    return jnp.sum(pooled ** 2)
x = jax.random.normal(jax.random.key(0), tuple(json.loads(sys.argv[1])), jnp.float32)
device = jax.devices()[0]
answer = {"platform": device.platform, "device": device.device_kind, "jax": jax.__version__}
begun = time.perf_counter()
try:
    gradient = jax.jit(jax.grad(loss)).lower(x).compile()
except Exception as error:
    answer["error"] = f"{type(error).__name__}: {error}"[:500]
else:
    answer["compile_s"] = time.perf_counter() - begun
    first, second = gradient(x), gradient(x)
    answer["repeatable"] = bool((first == second).all())
print(json.dumps(answer))
"""


@dataclass(frozen=True)
class Probe:
    """What the child saw: its device platform, and why the gradient did not compile (if not);
    where it compiled, in how long and whether two runs gave the same bits."""

    platform: str
    error: str | None
    xla_flags: str = ""
    device: str = ""
    jax: str = ""
    compile_s: float | None = None
    repeatable: bool | None = None

    @property
    def compiles(self) -> bool:
        return self.error is None


def probe(*, deterministic: bool = True, extra_flags: str = "", timeout_s: float = 300.0) -> Probe:
    """Compile one max-pool gradient, under the deterministic flag unless ``deterministic`` is
    false, in a fresh JAX process (XLA reads its flags once per process)."""
    inherited = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "deterministic_ops" not in f
    ]
    chosen = [*inherited, *([FLAG] if deterministic else []), *extra_flags.split()]
    flags = " ".join(chosen)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(_SHAPE)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={
            **os.environ,
            "XLA_FLAGS": flags,
            "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        },
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        answer = json.loads(lines[-1])
        return Probe(
            answer["platform"],
            answer.get("error"),
            xla_flags=flags,
            device=answer["device"],
            jax=answer["jax"],
            compile_s=answer.get("compile_s"),
            repeatable=answer.get("repeatable"),
        )
    # XLA aborts the whole process on a flag it does not know: the reason is on stderr.
    tail = " ".join(done.stderr.strip().splitlines()[-2:])[-500:]
    return Probe("unknown", f"exit code {done.returncode}: {tail}", xla_flags=flags)


def decide(setting: bool | str, found: Probe) -> bool:
    """Whether to set the flag, for ``train.deterministic`` = ``setting`` and the probe's answer.

    Raises:
        InputError: ``setting`` is true and this XLA cannot compile deterministically.
    """
    if setting is False or found.compiles:
        return setting is not False
    if setting == IF_AVAILABLE:
        _logger.warning(
            "XLA has no deterministic kernel for a max-pool gradient here (%s); "
            'train.deterministic = "if-available": training without it, so results are '
            "not reproducible to the last digit",
            found.error,
        )
        return False
    raise InputError(
        f"train.deterministic = true, but this jaxlib cannot compile Inception V3's max-pool "
        f"gradient with {FLAG} ({found.error}); fix: set train.deterministic = false, or "
        '"if-available" to train without it where it is missing, or install a jaxlib that has it'
    )


@functools.cache
def deterministic_xla(setting: bool | str) -> bool:
    """Whether this process should set XLA's deterministic flag; probed once, on a GPU only.

    On the CPU XLA is deterministic anyway and the flag is harmless, so no probe runs there
    (no NVIDIA device, or ``CUDA_VISIBLE_DEVICES`` empty).
    """
    if setting is False:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not os.path.exists("/dev/nvidiactl"):
        return True
    return decide(setting, probe())
