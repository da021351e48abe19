#!/usr/bin/env bash
# The one prepared GPU check of docs/performance.md: the device tool runs it in the repository
# root with the carried wheels in .whl/ (keras and the pure-Python packages its image lacks).
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
# It writes gpu.txt, gpu_throughput.{json,md,log} to $OUT (./gpu-check-out without one).
set -uo pipefail
out="${OUT:-$PWD/gpu-check-out}"
budget="${BUDGET_S:-420}"  # the benchmark stops measuring after this; the lease is 15 min
mkdir -p "$out"

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import sys; print("python", sys.version.split()[0])'
    python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-plugin|keras|numpy|optree) '
} 2>&1 | tee "$out/gpu.txt"

# The paper preset asks XLA for deterministic kernels; a jaxlib that no longer knows the flag
# refuses to start, so check it first and measure without it then (the table says which).
deterministic=""
if ! XLA_FLAGS=--xla_gpu_deterministic_ops=true timeout 120 python3 -c \
    'import jax, jax.numpy as jnp; print(jax.devices()); jnp.ones(8).block_until_ready()' \
    >> "$out/gpu.txt" 2>&1; then
    deterministic="--no-deterministic"
    echo "note: --xla_gpu_deterministic_ops was refused; measuring without it" | tee -a "$out/gpu.txt"
fi

# GPU_CHECK_ARGS=--tiny tries this script on a CPU.
timeout $((budget + 90)) python3 benchmarks/gpu_throughput.py --budget-s "$budget" $deterministic \
    ${GPU_CHECK_ARGS:-} \
    --out "$out/gpu_throughput.json" --markdown "$out/gpu_throughput.md" 2>&1 \
    | tee "$out/gpu_throughput.log"
