"""Does this jaxlib compile Inception V3's max-pool gradient with XLA's deterministic kernels?

The paper preset trains with ``deterministic = true``, which under JAX adds
``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` (``trainer.use_deterministic_xla``).
Keras's ``MaxPooling2D`` is ``lax.reduce_window(max)`` under JAX, and its gradient is XLA's
select-and-scatter, where overlapping windows (3x3 at stride 2, as in Inception V3) add into
the same pixel: an XLA that has no deterministic kernel for it, or that no longer knows the
flag, refuses to compile or to start, and then every cell of a deterministic JAX study fails.

This compiles that gradient, at the shape of Inception V3's first max pool, once without and
once with the flag, each in a fresh process (XLA reads its flags once), runs it twice and
compares the two results bit for bit. It writes JSON to ``--out`` and exits 1 when the
flagged gradient did not compile.

    python benchmarks/jax_determinism_probe.py --out determinism.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Inception V3 at 224 px: its first max pool takes 109 x 109 x 64 maps at batch 8.
_SHAPE = (8, 109, 109, 64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Write the results as JSON here.")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_probe(args.child == "on")))
        return 0
    runs = [_run_child(flag) for flag in ("off", "on")]
    report = {"shape": list(_SHAPE), "runs": runs}
    for run in runs:
        print(
            f"max-pool gradient, deterministic flag {run['flag']}: "
            + (
                f"compiled in {run['compile_s']:.1f} s; two runs bitwise equal: "
                f"{run['repeatable']}"
                if run["compiles"]
                else f"FAILED: {run['error']}"
            )
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if runs[-1]["compiles"] else 1


def _run_child(flag: str) -> dict[str, Any]:
    """The probe in a fresh process, so that XLA reads this run's flags."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", flag],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    # XLA aborts the process on a flag it does not know: the reason is on stderr.
    tail = done.stderr.strip().splitlines()[-3:]
    return {"flag": flag, "compiles": False, "error": f"exit {done.returncode}: {' '.join(tail)}"}


def _probe(deterministic: bool) -> dict[str, Any]:
    from trainer import use_deterministic_xla

    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if "deterministic_ops" not in f)
    if deterministic:
        use_deterministic_xla()  # the worker's own flag, set before JAX starts
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    def loss(x: jax.Array) -> jax.Array:
        pooled = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        return jnp.sum(pooled**2)

    x = jax.random.normal(jax.random.key(0), _SHAPE, jnp.float32)
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "flag": "on" if deterministic else "off",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{device.platform}: {device.device_kind}",
        "jax": jax.__version__,
    }
    begun = time.perf_counter()
    try:
        gradient = jax.jit(jax.grad(loss)).lower(x).compile()
    except Exception as error:  # the answer this probe is for
        return {**result, "compiles": False, "error": f"{type(error).__name__}: {error}"[:2000]}
    compile_s = time.perf_counter() - begun
    first, second = np.asarray(gradient(x)), np.asarray(gradient(x))
    return {
        **result,
        "compiles": True,
        "compile_s": compile_s,
        "repeatable": bool(np.array_equal(first, second)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
