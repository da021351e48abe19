"""Worker slots: which GPU (or none) each local worker process sees, and how to find GPUs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trainer import InputError
from trainer._devices import GPU_MEMORY_ENV

_logger = logging.getLogger(__name__)

# Set in each worker's environment to the launcher's pid; see follow_launcher.
LAUNCHER_ENV = "LRSTUDY_LAUNCHER_PID"
# Set in a GPU slot's environment: its worker must find a GPU or stop (no silent CPU fallback).
GPU_SLOT_ENV = "LRSTUDY_GPU_SLOT"
_VISIBLE = "CUDA_VISIBLE_DEVICES"
# What the JAX workers of one GPU may take together; the rest holds each process's CUDA
# context and cuDNN workspaces, which live outside JAX's memory pool.
_JAX_MEMORY_SHARE = 0.85


@dataclass(frozen=True)
class Slot:
    """One worker process to keep running: its number and the GPU it sees (None: CPU only).

    ``gpu`` is what the worker's ``CUDA_VISIBLE_DEVICES`` holds: a physical index as
    ``nvidia-smi`` numbers GPUs, or a GPU or MIG UUID. ``sharing`` is the number of workers on
    that GPU, this one included (``--per-gpu``).
    """

    index: int
    gpu: str | None = None
    sharing: int = 1
    memory_mib: float | None = None
    """The GPU's total memory, where ``nvidia-smi`` told it: TensorFlow workers sharing it get
    a cap of their share, as JAX workers get a fraction."""

    @property
    def name(self) -> str:
        return f"w{self.index}"

    @property
    def label(self) -> str:
        """The log prefix, e.g. ``w2 gpu1`` or ``w1 cpu``."""
        return f"{self.name} gpu{self.gpu}" if self.gpu is not None else f"{self.name} cpu"

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The worker's environment: ``base`` with only this slot's GPU visible.

        A GPU worker takes GPU memory as it needs it (TensorFlow and JAX both take most of it
        at start by default), so that workers can share a GPU and ``nvidia-smi`` shows what
        they use; with ``sharing`` K > 1, each JAX worker is also capped at 1/K of the GPU's
        memory share. Values already in ``base`` are kept, but for ``CUDA_VISIBLE_DEVICES``
        (this slot's GPU) and ``CUDA_DEVICE_ORDER`` (PCI bus order, so that an index means the
        GPU ``nvidia-smi`` shows under it; CUDA's default order is fastest first).
        """
        env = dict(base)
        # A CPU worker sees no GPU, so it cannot take memory from the GPU workers beside it.
        env[_VISIBLE] = self.gpu if self.gpu is not None else ""
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["PYTHONUNBUFFERED"] = "1"
        env[LAUNCHER_ENV] = str(os.getpid())
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines flood logs
        env.pop(GPU_SLOT_ENV, None)
        if self.gpu is not None:
            env[GPU_SLOT_ENV] = self.gpu
            env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            if self.sharing > 1:
                share = _JAX_MEMORY_SHARE / self.sharing
                env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{share:.3f}")
                if self.memory_mib is not None:
                    env.setdefault(GPU_MEMORY_ENV, str(int(share * self.memory_mib)))
        return env


def gpu_pool(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The GPUs this process was given, from an inherited ``CUDA_VISIBLE_DEVICES``; None if unset.

    On a shared server (or under Slurm) the variable names the GPUs that are ours, by index or
    by GPU/MIG UUID; an empty value means none. Workers must stay within it. As CUDA reads it,
    the list ends at the first entry that is neither (``-1``, the usual way to hide every GPU,
    names none).
    """
    value = (os.environ if environ is None else environ).get(_VISIBLE)
    if value is None:
        return None
    pool = []
    for part in (part.strip() for part in value.split(",")):
        if not (part.isdigit() or part.startswith(("GPU-", "MIG-"))):
            break
        pool.append(part)
    return pool


def find_gpus() -> list[str]:
    """Indices of this machine's NVIDIA GPUs: NVML when installed, else nvidia-smi; [] if none.

    These are physical indices as ``nvidia-smi`` shows them, which is what
    ``CUDA_VISIBLE_DEVICES`` selects in a fresh process with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """
    try:
        import pynvml
    except ImportError:
        pass
    else:
        try:
            pynvml.nvmlInit()
            try:
                return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            _logger.debug("NVML found no GPU (%s); trying nvidia-smi", error)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        _logger.warning("nvidia-smi did not answer (%s); assuming no GPU", error)
        return []
    if done.returncode != 0:
        _logger.warning("nvidia-smi failed (%s); assuming no GPU", done.stderr.strip()[:200])
        return []
    return parse_smi_indices(done.stdout)


def parse_smi_indices(text: str) -> list[str]:
    """GPU indices from ``nvidia-smi --query-gpu=index --format=csv,noheader`` output."""
    return [line.strip() for line in text.splitlines() if line.strip().isdigit()]


def plan_slots(
    *,
    gpus: str | None = None,
    workers: int | None = None,
    per_gpu: int = 1,
    available: Callable[[], list[str]] = find_gpus,
    environ: Mapping[str, str] | None = None,
    memory: Callable[[str], float | None] | None = None,
) -> list[Slot]:
    """The worker slots for ``--gpus``/``--workers``/``--per-gpu``.

    The pool of GPUs is the inherited ``CUDA_VISIBLE_DEVICES`` when it is set (the GPUs this
    user was given), else every GPU ``available`` lists.

    Args:
        gpus: ``"all"`` (the whole pool), or a comma-separated list of positions in the pool
            (``"0,1"``: its first two GPUs; on a machine with no inherited
            ``CUDA_VISIBLE_DEVICES`` these are ``nvidia-smi``'s indices) or of GPU/MIG UUIDs
            (``GPU-...``, ``MIG-...``) in the pool.
        workers: A number of CPU workers instead of GPU slots.
        per_gpu: Workers sharing each GPU (small batches leave a GPU idle). Defaults to `1`.
        available: Lists this machine's GPUs. Defaults to `find_gpus`.
        environ: Where ``CUDA_VISIBLE_DEVICES`` is read. Defaults to this process's environment.
        memory: A GPU's total memory in MiB, asked only with ``per_gpu`` > 1. Defaults to
            `None`: ``nvidia-smi``'s answer (``gpu_memory_mib``).

    With neither ``gpus`` nor ``workers``: one slot per GPU of the pool, else one CPU worker.
    """
    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise InputError(f"--per-gpu must be an integer >= 1; got {per_gpu!r}. Use --per-gpu 1.")
    if gpus is not None and workers is not None:
        raise InputError(
            f"--gpus and --workers exclude each other; got --gpus {gpus} and --workers "
            f"{workers}. Use --gpus for GPU workers or --workers N for CPU workers."
        )
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"--workers must be an integer >= 1; got {workers!r}.")
        if per_gpu > 1:
            raise InputError(
                f"--per-gpu {per_gpu} shares GPUs, and --workers {workers} starts CPU workers; "
                "drop --per-gpu, or use --gpus with it."
            )
        return [Slot(index) for index in range(1, workers + 1)]
    inherited = gpu_pool(environ)
    pool = inherited if inherited is not None else available()
    if gpus is None:
        if not pool:
            return [Slot(1)]
        chosen = pool
    else:
        given = (os.environ if environ is None else environ).get(_VISIBLE)
        chosen = _chosen_gpus(gpus, pool, given)
    lookup = memory or gpu_memory_mib
    totals = {gpu: lookup(gpu) for gpu in chosen} if per_gpu > 1 else {}
    return [
        Slot(index, gpu, per_gpu, totals.get(gpu))
        for index, gpu in enumerate((gpu for gpu in chosen for _ in range(per_gpu)), start=1)
    ]


def gpu_memory_mib(gpu: str) -> float | None:
    """A GPU's total memory in MiB as ``nvidia-smi`` reports it (index or UUID); None if it
    cannot say (no ``nvidia-smi``, or a MIG slice it does not query this way)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", gpu],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return float(done.stdout.strip().splitlines()[0]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def _chosen_gpus(gpus: str, pool: list[str], inherited: str | None) -> list[str]:
    if inherited is not None:
        shown = ",".join(pool)
        where = (
            f"the pool is CUDA_VISIBLE_DEVICES={shown}"
            if pool
            else f"CUDA_VISIBLE_DEVICES={inherited!r} names none"
        )
    else:
        where = f"this machine has GPUs {','.join(pool)}" if pool else "this machine has no GPU"
    if gpus.strip() == "all":
        if not pool:
            raise InputError(
                f"--gpus all found no GPU ({where}); use --workers N for CPU workers."
            )
        return pool
    chosen = [part.strip() for part in gpus.split(",")]
    picked = []
    for gpu in chosen:
        if gpu.isdigit():
            if int(gpu) >= len(pool):
                raise InputError(
                    f"--gpus names GPU {gpu}, which does not exist; {where}. "
                    + ("Use --gpus all or --workers N." if pool else "Use --workers N.")
                )
            picked.append(pool[int(gpu)])
        elif gpu.startswith(("GPU-", "MIG-")):
            if inherited is not None and gpu not in pool:
                raise InputError(f"--gpus names {gpu}, which is not ours; {where}.")
            picked.append(gpu)
        else:
            raise InputError(
                f"--gpus must be 'all', positions like 0,1,3 or GPU/MIG UUIDs; got {gpus!r}. "
                f"({where})"
            )
    if len(set(picked)) != len(picked):
        raise InputError(f"--gpus lists a GPU twice: {gpus!r}; use --per-gpu K to share a GPU.")
    return picked


def plan_lines(
    slots: list[Slot], base: Mapping[str, str], worker_id: Callable[[Slot], str]
) -> list[str]:
    """What ``launch --dry-run`` prints: one line per slot, as its worker would start."""
    keys = (
        "CUDA_VISIBLE_DEVICES",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        GPU_MEMORY_ENV,
    )
    lines = []
    for slot in slots:
        env = slot.environment(base)
        shown = " ".join(f"{key}={env[key]!s}" for key in keys if key in env)
        lines.append(f"{worker_id(slot)}  {slot.label}  {shown}")
    return lines
