"""Does this jaxlib compile Inception V3's max-pool gradient with XLA's deterministic kernels?

The paper preset trains with ``deterministic = true``, which under JAX adds
``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` (``trainer.use_deterministic_xla``).
Keras's ``MaxPooling2D`` is ``lax.reduce_window(max)`` under JAX, and its gradient is XLA's
select-and-scatter, where overlapping windows (3x3 at stride 2, as in Inception V3) add into
the same pixel: an XLA that has no deterministic kernel for it, or that no longer knows the
flag, refuses to compile or to start, and then every cell of a deterministic JAX study fails.

This runs the probe a JAX worker runs at its start on a GPU (``trainer._determinism.probe``):
it compiles that gradient, at the shape of Inception V3's first max pool, once without and once
with the flag, each in a fresh process (XLA reads its flags once), runs it twice and compares
the two results bit for bit. It writes JSON to ``--out`` and exits 1 when the
flagged gradient did not compile.

    python benchmarks/jax_determinism_probe.py --out determinism.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing lrstudy
    sys.path.insert(0, str(ROOT))

from trainer._determinism import probe  # noqa: E402  (after the path fix above)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Write the results as JSON here.")
    args = parser.parse_args()
    runs = []
    for flag in ("off", "on"):
        found = probe(deterministic=flag == "on")
        runs.append({"flag": flag, "compiles": found.compiles, **dataclasses.asdict(found)})
        print(
            f"max-pool gradient, deterministic flag {flag}: "
            + (
                f"compiled in {found.compile_s:.1f} s on {found.platform} ({found.device}); "
                f"two runs bitwise equal: {found.repeatable}"
                if found.compiles and found.compile_s is not None
                else f"FAILED: {found.error}"
            )
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs}, indent=2))
    return 0 if runs[-1]["compiles"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
