"""GPU throughput of the paper's protocol, timed as a study worker trains, and the grid it implies.

Inception V3 at 224 px trains on uint8 images in one memory-mapped file that every process
reads, as the workers of a machine share the image cache (random pixels), fed by the trainer's
``BatchFeed`` through whole ``model.fit`` calls without per-batch callbacks: as in a worker, the
device is synchronised once per ``fit``, not per step. It measures:

- whether float32 convolutions and matrix products run as TF32 at JAX's default precision (as
  Keras calls them), and the matrix rate (a ``jnp.dot`` loop) in fp32, TF32 where used, bf16
  and fp16;
- the start of a cell in one process with an empty compilation cache: model build, the
  training step at the batch and at the tail batch (2930 % 8), the prediction step at the
  evaluation batch and at the validation tail, the test pass with its own tail; the programs
  compiled are counted (JAX's persistent cache, ``trainer/_compile_cache.py``);
- the ceiling: one process at batch 128 over 8,192 images, XLA-compiled, float32 and mixed
  precision; the prediction rate at the evaluation batch; one checkpoint save (weights + Adam)
  with the trainer's ``save_checkpoint``;
- K = 1, 2, 4, 8 worker processes on the GPU (the environment of ``launch --per-gpu 8``),
  each running one grid epoch at once: ``fit`` over 2,930 images at batch 8, prediction of
  2,426 at the evaluation batch, a checkpoint save; and the same cell start, all at once, from
  the compilation cache the single process filled;
- determinism's cost: one worker's cell start and grid epoch with XLA's deterministic kernels
  switched the other way;
- uncompiled (eager) training at batch 8 and 128 over a few steps, last, as it is slow;
- each run's share of the ceiling and of the matrix rate at its precision (FLOPs counted from
  the model's convolutions and dense layers; a training step counts 3x the forward pass);
- the paper grid's wall time for each K, computed from these measurements only (``project``).

It prints Markdown tables and writes JSON to ``--out``. Only Keras (JAX backend), JAX, NumPy
and the trainer are used: it runs on a machine without TensorFlow, Optuna or scikit-learn.
``--tiny`` runs the same code on a small CNN at 32 px, and a 3-cell grid, on a CPU, for CI.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --out gpu_throughput.json
    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --tiny --out /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing lrstudy
    sys.path.insert(0, str(ROOT))

from study.spec import PRESETS  # noqa: E402  (after the path fix above)
from trainer import PAPER_COUNTS  # noqa: E402

_MESSAGE = "@@ "  # prefix of a child's protocol lines; anything else it prints is passed on
STAGES = ("solo", "packed", "steps", "determinism", "eager")
# Relative error of float32 products at the default precision against true fp32 above which
# they ran in reduced precision (TF32 rounds to 10 mantissa bits, about 5e-4; fp32 sums that
# only reorder stay near 1e-6).
_TF32_ERROR = 1e-4


@dataclass(frozen=True)
class Variant:
    """How a model is compiled: precision, XLA and training steps per call
    (``train.steps_per_execution``)."""

    name: str
    mixed_precision: bool
    jit_compile: bool
    steps_per_execution: int = 1


VARIANTS = {
    v.name: v
    for v in (
        Variant("fp32-xla", mixed_precision=False, jit_compile=True),
        Variant("mixed-xla", mixed_precision=True, jit_compile=True),
        Variant("fp32-eager", mixed_precision=False, jit_compile=False),
        Variant("fp32-xla-spe4", mixed_precision=False, jit_compile=True, steps_per_execution=4),
        Variant("fp32-xla-spe16", mixed_precision=False, jit_compile=True, steps_per_execution=16),
    )
}
COMPILED = ("fp32-xla", "mixed-xla")
# The steps stage: the paper's variant at 1, 4 and 16 training steps per call, at batch 8.
STEPS = ("fp32-xla", "fp32-xla-spe4", "fp32-xla-spe16")


@dataclass(frozen=True)
class Grid:
    """A study grid's size: cells, epochs per cell and images per part."""

    cells: int
    epochs: int
    train: int
    val: int
    test: int


_PAPER_TRAIN = PRESETS["paper"]["train"]
# The paper preset itself: 4 learning rates x 3 seeds, 60 epochs, Table 2's split (2930/2426/500).
PAPER_GRID = Grid(
    len(PRESETS["paper"]["grid"]["learning_rate"]) * len(PRESETS["paper"]["grid"]["seed"]),
    _PAPER_TRAIN["epochs"],
    *(int(n) for n in PAPER_COUNTS.sum(axis=1)),
)


@dataclass(frozen=True)
class Sizes:
    model: str
    image_size: int
    images: int  # images in the shared memory-mapped file; the ceiling fits over all of them
    batch: int  # the paper's per-worker batch
    ceiling_batch: int
    eval_batch: int
    workers: tuple[int, ...]
    seconds: float  # least measuring time of a ceiling run (whole fits, at least one)
    eager_steps: int  # steps of an uncompiled run
    matmul_n: int
    matmul_seconds: float
    grid: Grid


FULL = Sizes(
    _PAPER_TRAIN["model"], _PAPER_TRAIN["image_size"], 8192, _PAPER_TRAIN["batch_size"], 128,
    _PAPER_TRAIN["eval_batch_size"], (1, 2, 4, 8), 5.0, 8, 8192, 1.0, PAPER_GRID,
)  # fmt: skip
# Tails as in the paper grid: 42 % 8, 30 % 16 and 20 % 16 are not 0; 3 cells on 2 workers
# leave a last round of 1.
TINY = Sizes("small_cnn", 32, 256, 8, 32, 16, (1, 2), 0.0, 2, 256, 0.1, Grid(3, 2, 42, 30, 20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Write the results as JSON here (required).")
    parser.add_argument("--markdown", help="Also write the Markdown tables here.")
    parser.add_argument("--tiny", action="store_true", help="Small CNN, 32 px, CPU-sized.")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="Stop measuring after this many seconds."
    )
    parser.add_argument(
        "--no-deterministic",
        dest="deterministic",
        action="store_false",
        help="Without XLA's deterministic GPU kernels (the paper preset uses them); the "
        "determinism stage then measures with them.",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"Comma-separated stages to run, in this order: {', '.join(STAGES)} (default all). "
        "The projection needs solo and packed.",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--no-compile-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    if args.child:
        return _child(args, sizes)
    if not args.out:
        parser.error("--out FILE is required: where the JSON results go")
    stages = [s for s in args.stages.split(",") if s]
    if unknown := sorted(set(stages) - set(STAGES)):
        parser.error(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return _parent(args, sizes, stages)


# --- the parent: starts children, tells them what to run, gathers and reports --------------


class _Child:
    """A worker process that answers one JSON line per command on its stdin."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", *argv],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(_MESSAGE):
                self.messages.put(json.loads(line[len(_MESSAGE) :]))
            else:
                sys.stderr.write(line)
        self.messages.put({"event": "exited", "code": self.process.wait()})

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any]:
        try:
            message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise _OutOfTime from None
        if message.get("event") == "exited":
            raise RuntimeError(f"a benchmark child exited early with code {message['code']}")
        if "error" in message:
            raise RuntimeError(f"a benchmark child failed: {message['error']}")
        return message

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class _OutOfTime(Exception):
    """The time budget ended before a child answered."""


class _Bench:
    """What the parent holds: the report it fills, its children, the time left."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, scratch: Path) -> None:
        self.sizes, self.deterministic, self.tiny = sizes, args.deterministic, args.tiny
        self.scratch = scratch
        self.pool = _write_pool(scratch / "images.npy", sizes)
        self.deadline = time.monotonic() + args.budget_s
        # Every child compiles into one persistent cache: the packed workers then load what
        # the single process compiled, as a machine's workers would share it.
        self.base = {
            **os.environ,
            "KERAS_BACKEND": "jax",
            "JAX_COMPILATION_CACHE_DIR": str(scratch / "jax-cache"),
        }
        self.children: list[_Child] = []
        self.report: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "sizes": asdict(sizes),
            "deterministic": args.deterministic,
            "python": platform.python_version(),
            "versions": {name: _version(name) for name in ("keras", "jax", "jaxlib", "numpy")},
            "runs": [],
            "cell_start": [],
            "predict": [],
            "skipped": [],
        }

    def start(self, seed: int, sharing: int, deterministic: bool, cache: bool = True) -> _Child:
        from study.launch import Slot

        scratch = self.scratch / f"child-{len(self.children)}"
        scratch.mkdir()
        argv = ["--seed", str(seed), "--pool", str(self.pool), "--scratch", str(scratch)]
        argv += ["--tiny"] if self.tiny else []
        argv += [] if deterministic else ["--no-deterministic"]
        argv += [] if cache else ["--no-compile-cache"]
        child = _Child(argv, Slot(seed + 1, "0", sharing).environment(self.base))
        self.children.append(child)
        return child

    def hello(self, children: list[_Child]) -> list[dict[str, Any]]:
        return [child.receive(self.deadline) for child in children]

    def ask(self, children: list[_Child], command: dict[str, Any]) -> list[dict[str, Any]]:
        for child in children:
            child.send(command)
        return [child.receive(self.deadline) for child in children]

    def stop(self, children: list[_Child]) -> None:
        for child in children:
            child.stop()

    def cell_start(self, children: list[_Child], variant: str, deterministic: bool) -> None:
        """Start a cell in every child at once; record the slowest one."""
        answers = self.ask(children, {"cell": variant})
        slowest = max(answers, key=lambda a: a["seconds"])
        self.report.setdefault("flops_per_image", slowest["flops_per_image"])
        self.report["cell_start"].append(
            {"variant": variant, "deterministic": deterministic, "workers": len(children),
             "seconds": slowest["seconds"], "phases": slowest["phases"]}
        )  # fmt: skip

    def fit(self, child: _Child, variant: str, batch: int, images: int, seconds: float) -> None:
        """Whole fits over ``images`` at ``batch`` after a one-step warm-up, in one child."""
        answer = self.ask([child], {"fit": variant, "batch": batch, "images": images,
                                    "seconds": seconds})[0]  # fmt: skip
        self.report["runs"].append(
            {"kind": "fit", "variant": variant, "deterministic": self.deterministic,
             "batch": batch, "workers": 1, "images": images, "fits": answer["fits"],
             "images_per_s": answer["images_per_s"], "warmup_s": answer["warmup_s"],
             "step_ms": [1000.0 * batch / answer["images_per_s"]]}
        )  # fmt: skip

    def epoch(self, children: list[_Child], variant: str, deterministic: bool) -> None:
        """One grid epoch in every child at once: fit, validation, checkpoint."""
        begun = time.monotonic()
        answers = self.ask(children, {"epoch": variant})
        wall = time.monotonic() - begun
        grid = self.sizes.grid
        fit_s = max(a["fit_s"] for a in answers)
        self.report["runs"].append(
            {"kind": "epoch", "variant": variant, "deterministic": deterministic,
             "batch": self.sizes.batch, "workers": len(children), "images": grid.train,
             "images_per_s": len(children) * grid.train / fit_s,
             "step_ms": [1000.0 * a["fit_s"] / a["steps"] for a in answers],
             "epoch_s": wall, "fit_s": fit_s,
             "validation_s": max(a["validation_s"] for a in answers),
             "checkpoint_s": max(a["checkpoint_s"] for a in answers)}
        )  # fmt: skip


def _parent(args: argparse.Namespace, sizes: Sizes, stages: list[str]) -> int:
    started = time.monotonic()
    stage_of: dict[str, Callable[[_Bench], None]] = {
        "solo": _stage_solo,
        "packed": _stage_packed,
        "steps": _stage_steps,
        "determinism": _stage_determinism,
        "eager": _stage_eager,
    }
    with tempfile.TemporaryDirectory() as scratch:
        bench = _Bench(args, sizes, Path(scratch))
        report = bench.report
        try:
            for stage in stages:
                stage_of[stage](bench)
        except _OutOfTime:
            report["skipped"].append(f"stopped by --budget-s {args.budget_s:g} before the end")
        except (RuntimeError, OSError) as error:
            report["skipped"].append(f"stopped by an error: {error}")
        finally:
            bench.stop(bench.children)
    report["seconds"] = time.monotonic() - started
    _summarize(report, sizes)
    table = _markdown(report)
    print(table)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 1 if any("error" in line for line in report["skipped"]) else 0


def _stage_solo(bench: _Bench) -> None:
    """One process alone on the GPU: precision, matrix rate, cold cell starts, the ceiling."""
    sizes, report = bench.sizes, bench.report
    solo = bench.start(0, 1, bench.deterministic)
    report["device"] = bench.hello([solo])[0]["device"]
    report["feed_ms"] = bench.ask([solo], {"feed": True})[0]["feed_ms"]
    precision = bench.ask([solo], {"precision": True})[0]
    precision["runs_as"] = "tf32" if precision["conv_error"] > _TF32_ERROR else "fp32"
    report["float32_precision"] = precision
    report["matmul_tflops"] = bench.ask(
        [solo], {"matmul": sizes.matmul_n, "seconds": sizes.matmul_seconds,
                 "tf32": precision["dot_error"] > _TF32_ERROR}
    )[0]["tflops"]  # fmt: skip
    for variant in COMPILED:  # the paper's float32 first, in case the budget runs out
        bench.cell_start([solo], variant, bench.deterministic)
        bench.fit(solo, variant, sizes.ceiling_batch, sizes.images, sizes.seconds)
        report["predict"] += bench.ask([solo], {"predict": variant})
        if variant == COMPILED[0]:
            report["checkpoint"] = bench.ask([solo], {"checkpoint": variant})[0]
    bench.stop([solo])  # its memory pool would crowd the packed workers


def _stage_packed(bench: _Bench) -> None:
    """K workers at batch 8, all started together with the environment of --per-gpu K_max."""
    most = max(bench.sizes.workers)
    packed = [bench.start(i, most, bench.deterministic) for i in range(most)]
    bench.report["startup_s"] = max(a["ready_s"] for a in bench.hello(packed))
    for variant in COMPILED:
        bench.cell_start(packed, variant, bench.deterministic)
    for variant in COMPILED:
        for workers in bench.sizes.workers:
            bench.epoch(packed[:workers], variant, bench.deterministic)
    bench.stop(packed)


def _stage_steps(bench: _Bench) -> None:
    """One worker at the paper's batch with 1, 4 and 16 training steps per call: what
    ``train.steps_per_execution`` saves in host round trips, to choose its default."""
    sizes = bench.sizes
    child = bench.start(0, 1, bench.deterministic)
    bench.hello([child])
    for variant in STEPS:
        bench.fit(child, variant, sizes.batch, sizes.images, sizes.seconds)
    bench.stop([child])


def _stage_determinism(bench: _Bench) -> None:
    """One worker's cell start and grid epoch with the deterministic kernels the other way."""
    other = not bench.deterministic
    child = bench.start(0, 1, other)
    bench.hello([child])
    bench.cell_start([child], COMPILED[0], other)
    bench.epoch([child], COMPILED[0], other)
    bench.stop([child])


def _stage_eager(bench: _Bench) -> None:
    """Uncompiled training (``jit_compile = false``) at batch 8 and at the ceiling's batch."""
    sizes = bench.sizes
    # Without the persistent cache: op-by-op execution compiles no program worth sharing, and
    # writing each operation's small one to disk would slow it further.
    child = bench.start(0, 1, bench.deterministic, cache=False)
    bench.hello([child])
    for batch in (sizes.batch, sizes.ceiling_batch):
        bench.fit(child, "fp32-eager", batch, sizes.eager_steps * batch, 0.0)
    bench.stop([child])


def _write_pool(path: Path, sizes: Sizes) -> Path:
    """The shared file of random uint8 images, shaped like the image cache."""
    import numpy as np

    shape = (sizes.images, sizes.image_size, sizes.image_size, 3)
    images = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    rng = np.random.default_rng(0)
    for start in range(0, sizes.images, 256):
        chunk = images[start : start + 256]
        chunk[:] = rng.integers(0, 256, chunk.shape, dtype=np.uint8)
    images.flush()
    del images
    return path


def _summarize(report: dict[str, Any], sizes: Sizes) -> None:
    """Each run's share of the ceiling and of the matrix rate, then the grid projection."""
    flops = report.get("flops_per_image")
    tflops = report.get("matmul_tflops", {})
    float32 = report.get("float32_precision", {}).get("runs_as")
    ceilings: dict[tuple[str, bool], float] = {}
    for run in report["runs"]:
        if run["kind"] == "fit" and run["batch"] == sizes.ceiling_batch:
            ceilings[(run["variant"], run["deterministic"])] = run["images_per_s"]
    for run in report["runs"]:
        precision = "fp16" if VARIANTS[run["variant"]].mixed_precision else float32
        achieved = 3 * flops * run["images_per_s"] / 1e12 if flops else None
        run["precision"] = precision
        run["train_tflops"] = achieved
        rate = tflops.get(precision) if precision else None
        run["of_matmul_rate"] = achieved / rate if achieved and rate else None
        ceiling = ceilings.get((_one_step(run["variant"]), run["deterministic"]))
        run["of_ceiling"] = run["images_per_s"] / ceiling if ceiling else None
    report["grid_projection"] = []
    for variant in COMPILED:
        starts = {
            s["workers"]: s["seconds"]
            for s in report["cell_start"]
            if s["variant"] == variant and s["deterministic"] == report["deterministic"]
        }
        epochs = {
            r["workers"]: r["epoch_s"]
            for r in report["runs"]
            if r["kind"] == "epoch"
            and r["variant"] == variant
            and r["deterministic"] == report["deterministic"]
        }
        if 1 not in starts:
            continue
        warm = starts.get(max(sizes.workers))
        for workers in sizes.workers:
            projection = project(sizes.grid, workers, starts[1], warm, epochs)
            if projection is not None:
                report["grid_projection"].append({"variant": variant, **projection})


def _one_step(name: str) -> str:
    """The variant that compiles as ``name`` does with one step per call: its ceiling's."""
    v = VARIANTS[name]
    same = (v.mixed_precision, v.jit_compile, 1)
    return next(o.name for o in VARIANTS.values()
                if (o.mixed_precision, o.jit_compile, o.steps_per_execution) == same)  # fmt: skip


def project(
    grid: Grid,
    workers: int,
    cold_start_s: float,
    warm_start_s: float | None,
    epoch_s: dict[int, float],
) -> dict[str, Any] | None:
    """The grid's wall time on one GPU with ``workers`` processes, from measured inputs only.

    The cells run in rounds of ``workers`` at once, the last round with the remainder
    (``ceil(cells / workers)`` rounds). A round takes one cell start (model build, every
    compile of the train and predict shapes, the test pass) plus ``epochs`` grid epochs at the
    number of workers that round runs (``epoch_s[k]``: the measured wall time of one epoch's
    ``fit``, validation and checkpoint with ``k`` workers at once). ``cold_start_s`` is a cell
    start with an empty compilation cache, as every cell of a worker compiles today;
    ``warm_start_s`` one that loads the programs from the persistent cache, for the total with
    that cache (the first round still compiles).

    Returns:
        The rounds and totals, or None when an epoch time a round needs was not measured.
    """
    rounds = [min(workers, grid.cells - first) for first in range(0, grid.cells, workers)]
    if any(k not in epoch_s for k in rounds):
        return None
    epochs = sum(grid.epochs * epoch_s[k] for k in rounds)
    starts = len(rounds) * cold_start_s
    cached = None
    if warm_start_s is not None:
        cached = (epochs + cold_start_s + (len(rounds) - 1) * warm_start_s) / 60
    return {
        "workers": workers,
        "rounds": rounds,
        "cell_starts_s": starts,
        "epochs_s": epochs,
        "total_minutes": (starts + epochs) / 60,
        "cached_total_minutes": cached,
    }


def _markdown(report: dict[str, Any]) -> str:
    def number(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    grid = Grid(**report["sizes"]["grid"])
    precision = report.get("float32_precision", {})
    lines = [
        f"device: {report.get('device', '?')}; keras {report['versions']['keras']}, "
        f"jax {report['versions']['jax']}; XLA deterministic kernels: {report['deterministic']} "
        "(except rows marked otherwise)",
    ]
    if precision:
        lines.append(
            f"float32 at JAX's default precision runs as {precision['runs_as'].upper()} "
            f"(relative error against true fp32: convolution {precision['conv_error']:.1e}, "
            f"matrix product {precision['dot_error']:.1e})"
        )
    lines += [
        f"matrix rate, TFLOP/s ({report['sizes']['matmul_n']}^2 jnp.dot): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report.get("matmul_tflops", {}).items()),
        f"forward FLOPs per image: {number(report.get('flops_per_image'), '.3g')} (x3 per "
        f"training step); feed CPU time per batch of {report['sizes']['batch']}: "
        f"{number(report.get('feed_ms'), '.3f')} ms",
    ]
    if "checkpoint" in report:
        saved = report["checkpoint"]
        lines.append(
            f"checkpoint (weights + optimizer, trainer.save_checkpoint, one process): "
            f"{saved['bytes'] / 1e6:.0f} MB in {saved['seconds']:.2f} s"
        )
    lines += [
        "",
        "| run | variant | precision | deterministic | batch | workers | images/s | of ceiling "
        "| TFLOP/s | of matrix rate | step ms | epoch s (fit, validation, checkpoint) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in report["runs"]:
        steps = sum(run["step_ms"]) / len(run["step_ms"])
        epoch = "-"
        if run["kind"] == "epoch":
            epoch = (
                f"{run['epoch_s']:.1f} ({run['fit_s']:.1f}, {run['validation_s']:.1f}, "
                f"{run['checkpoint_s']:.1f})"
            )
        lines.append(
            f"| {run['kind']} | {run['variant']} | {run['precision'] or '-'} "
            f"| {run['deterministic']} | {run['batch']} | {run['workers']} "
            f"| {run['images_per_s']:.1f} | {number(run['of_ceiling'], '.0%')} "
            f"| {number(run['train_tflops'], '.2f')} | {number(run['of_matmul_rate'], '.1%')} "
            f"| {steps:.1f} | {epoch} |"
        )
    for p in report["predict"]:
        lines.append(f"\nprediction at batch {p['batch']}, {p['variant']}: "
                     f"{p['images_per_s']:.1f} images/s")  # fmt: skip
    if report["cell_start"]:
        lines += [
            "",
            "cell start: seconds (programs compiled / loaded from the cache) per phase",
            "",
            "| variant | deterministic | workers at once | build | train | validation | test "
            "| total s |",
            "| --- | --- | ---: | --- | --- | --- | --- | ---: |",
        ]
        for start in report["cell_start"]:
            phases = " | ".join(
                f"{p['seconds']:.1f} ({p['compiled']} / {p['loaded']})"
                + (f" at {p['shapes']}" if p["shapes"] else "")
                for p in start["phases"].values()
            )
            lines.append(
                f"| {start['variant']} | {start['deterministic']} | {start['workers']} "
                f"| {phases} | {start['seconds']:.1f} |"
            )
    if report["grid_projection"]:
        lines += [
            "",
            f"grid of {grid.cells} cells x {grid.epochs} epochs ({grid.train} training, "
            f"{grid.val} validation, {grid.test} test images), from the cold cell start of one "
            "process and the measured epoch at each round's number of workers:",
            "",
            "| variant | workers | rounds | cell starts min | epochs min | total min "
            "| with the compilation cache, min |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for p in report["grid_projection"]:
            lines.append(
                f"| {p['variant']} | {p['workers']} | {len(p['rounds'])} ({p['rounds'][-1]} in "
                f"the last) | {p['cell_starts_s'] / 60:.1f} | {p['epochs_s'] / 60:.1f} "
                f"| {p['total_minutes']:.1f} | {number(p['cached_total_minutes'], '.1f')} |"
            )
    for line in report["skipped"]:
        lines.append(f"\nnote: {line}")
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- a child: builds models, then trains or predicts as the parent says -------------------


def _child(args: argparse.Namespace, sizes: Sizes) -> int:
    started = time.monotonic()
    if args.deterministic:
        from trainer import use_deterministic_xla

        use_deterministic_xla()  # before JAX starts, as the CLI does for a worker
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("gpu_throughput.py measures Keras on JAX: set KERAS_BACKEND=jax")
    if not args.no_compile_cache:
        from trainer._compile_cache import use_persistent_compilation_cache

        use_persistent_compilation_cache()
    import jax

    worker = _Worker(sizes, args)
    device = jax.devices()[0]
    _send(sys.stdout, {"device": f"{device.platform}: {device.device_kind}",
                       "ready_s": time.monotonic() - started})  # fmt: skip
    for line in sys.stdin:
        command = json.loads(line)
        try:
            _send(sys.stdout, worker.run(command))
        except Exception as error:  # reported to the parent, which stops with it
            _send(sys.stdout, {"error": f"{type(error).__name__}: {error}"})
    return 0


class _Worker:
    """A child's models and parts: the shared pool, and train, val and test drawn from it."""

    def __init__(self, sizes: Sizes, args: argparse.Namespace) -> None:
        import numpy as np

        from trainer import CheckpointWriter, Part

        self.sizes, self.seed, self.deterministic = sizes, args.seed, args.deterministic
        self.scratch = Path(args.scratch)
        self.writer = CheckpointWriter()
        self.models: dict[str, Any] = {}
        self.epochs = 0
        images = np.load(args.pool, mmap_mode="r")
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(images))
        grid = sizes.grid
        rows = {
            "pool": np.arange(len(images)),
            "train": order[: grid.train],
            "val": order[grid.train : grid.train + grid.val],
            "test": order[grid.train + grid.val : grid.train + grid.val + grid.test],
        }
        self.parts = {
            name: Part(
                name=name,
                images=images,
                indices=np.sort(chosen).astype(np.int64),
                labels=rng.integers(0, 2, len(chosen)).astype(np.uint8),
                paths=tuple(f"image{i}.png" for i in np.sort(chosen)),
            )
            for name, chosen in rows.items()
        }

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        if "feed" in command:
            return {"feed_ms": self.feed_ms()}
        if "precision" in command:
            return _float32_errors()
        if "matmul" in command:
            rates = _matmul_tflops(command["matmul"], command["seconds"], command["tf32"])
            return {"tflops": rates}
        if "cell" in command:
            return self.cell(command["cell"])
        if "fit" in command:
            batch, images, seconds = command["batch"], command["images"], command["seconds"]
            return self.fit(command["fit"], batch, images, seconds)
        if "predict" in command:
            return self.predict(command["predict"])
        if "checkpoint" in command:
            return self.checkpoint(command["checkpoint"])
        if "epoch" in command:
            return self.epoch(command["epoch"])
        raise ValueError(f"unknown command {command}")

    def feed_ms(self) -> float:
        """CPU milliseconds to read one training batch from the memory-mapped file."""
        from trainer._feed import BatchFeed

        feed = BatchFeed(self.parts["train"], self.sizes.batch, shuffle=True, seed=self.seed)
        begun, reads = time.perf_counter(), 0
        while time.perf_counter() - begun < 0.5:
            for index in range(len(feed)):
                feed[index]
                reads += 1
        return 1000.0 * (time.perf_counter() - begun) / reads

    def build(self, name: str) -> Any:
        """A fresh model, seeded as a cell's (``set_up_cell`` does the same)."""
        from trainer import build_model, seed_and_determinism

        variant = VARIANTS[name]
        seed_and_determinism(self.seed, self.deterministic)
        self.models[name] = build_model(
            self.sizes.model,
            self.sizes.image_size,
            "none",
            optimizer="adam",
            learning_rate=1e-4,
            mixed_precision=variant.mixed_precision,
            jit_compile=variant.jit_compile,
            steps_per_execution=variant.steps_per_execution,
        )
        return self.models[name]

    def cell(self, name: str) -> dict[str, Any]:
        """A cell's start, phase by phase: build, the train and predict shapes, the test pass."""
        grid, batch, eval_batch = self.sizes.grid, self.sizes.batch, self.sizes.eval_batch
        train, val = _shapes(grid.train, batch), _shapes(grid.val, eval_batch)
        tested = _shapes(grid.test, eval_batch)
        phases: dict[str, dict[str, Any]] = {}
        _phase(phases, "build", [], lambda: self.build(name))
        model = self.models[name]
        # One batch of each shape compiles the steps; the test pass is the cell's own.
        first_train = _head(self.parts["train"], sum(train))
        first_val = _head(self.parts["val"], sum(val))
        test = self.parts["test"]
        _phase(phases, "train", train, lambda: _fit(model, first_train, batch, 0))
        _phase(phases, "validation", val, lambda: _predict(model, first_val, eval_batch))
        _phase(phases, "test", tested, lambda: _predict(model, test, eval_batch))
        return {
            "phases": phases,
            "seconds": sum(p["seconds"] for p in phases.values()),
            "flops_per_image": _forward_flops(model),
        }

    def model(self, name: str) -> Any:
        return self.models[name] if name in self.models else self.build(name)

    def fit(self, name: str, batch: int, images: int, seconds: float) -> dict[str, Any]:
        """Images/s of whole fits over ``images`` for at least ``seconds``, after a warm-up."""
        model = self.model(name)
        part = _head(self.parts["pool"], images)
        begun = time.perf_counter()
        # Compiles the step at this batch (one call of steps_per_execution steps).
        _fit(model, _head(part, batch * VARIANTS[name].steps_per_execution), batch, 0)
        warmup = time.perf_counter() - begun
        fits, begun = 0, time.perf_counter()
        while fits == 0 or time.perf_counter() - begun < seconds:
            _fit(model, part, batch, fits)
            fits += 1
        rate = fits * images / (time.perf_counter() - begun)
        return {"images_per_s": rate, "fits": fits, "warmup_s": warmup}

    def predict(self, name: str) -> dict[str, Any]:
        model, batch = self.models[name], self.sizes.eval_batch
        _predict(model, _head(self.parts["pool"], batch), batch)  # compiles, if not yet
        begun = time.perf_counter()
        _predict(model, self.parts["pool"], batch)
        rate = self.sizes.images / (time.perf_counter() - begun)
        return {"variant": name, "batch": batch, "images_per_s": rate}

    def checkpoint(self, name: str) -> dict[str, Any]:
        """One save of the model and its optimizer, as a cell saves after every epoch."""
        from trainer import save_checkpoint

        path = self.scratch / "checkpoint.npz"
        begun = time.perf_counter()
        save_checkpoint(path, self.models[name], {"epoch": self.epochs})
        return {"variant": name, "seconds": time.perf_counter() - begun,
                "bytes": path.stat().st_size}  # fmt: skip

    def epoch(self, name: str) -> dict[str, Any]:
        """One grid epoch as ``train_cell`` runs it: fit, validation prediction, checkpoint.

        The checkpoint is saved as the trainer saves it: the variables are copied on the
        training path (``checkpoint_s``), hashed and written on a thread beside what follows.
        """
        model = self.models[name]
        began = time.perf_counter()
        steps = _fit(model, self.parts["train"], self.sizes.batch, self.epochs)
        fitted = time.perf_counter()
        _predict(model, self.parts["val"], self.sizes.eval_batch)
        validated = time.perf_counter()
        self.epochs += 1
        self.writer.save(self.scratch / "checkpoint.npz", model, {"epoch": self.epochs})
        return {"steps": steps, "fit_s": fitted - began, "validation_s": validated - fitted,
                "checkpoint_s": time.perf_counter() - validated}  # fmt: skip


def _phase(
    phases: dict[str, dict[str, Any]], name: str, shapes: list[int], action: Callable[[], Any]
) -> None:
    """Time ``action`` and count the programs it compiled and loaded from the cache."""
    from trainer._compile_cache import count_compiles

    with count_compiles() as count:
        begun = time.perf_counter()
        action()
        seconds = time.perf_counter() - begun
    phases[name] = {"shapes": shapes, "seconds": seconds, "compiled": count.misses,
                    "loaded": count.hits}  # fmt: skip


def _shapes(images: int, batch: int) -> list[int]:
    """The batch sizes a pass over ``images`` runs: the full batch and the tail, if any."""
    return [n for n in (batch if images >= batch else 0, images % batch) if n]


def _head(part: Any, count: int) -> Any:
    """The first ``count`` images of a part."""
    from dataclasses import replace

    return replace(part, indices=part.indices[:count], labels=part.labels[:count],
                   paths=part.paths[:count])  # fmt: skip


def _fit(model: Any, part: Any, batch: int, epoch: int) -> int:
    """One ``fit`` over the part as a cell's epoch runs (no callbacks); waits for the device."""
    import jax

    from trainer._feed import BatchFeed

    feed = BatchFeed(part, batch, shuffle=True, seed=0, epoch=epoch)
    model.fit(feed, epochs=1, shuffle=False, verbose=0)
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return len(feed)


def _predict(model: Any, part: Any, batch: int) -> None:
    """A prediction pass as a cell validates and tests; the result is read back to the host."""
    import numpy as np

    from trainer._feed import BatchFeed

    np.asarray(model.predict(BatchFeed(part, batch, shuffle=False), verbose=0))


def _float32_errors() -> dict[str, float]:
    """How far float32 products at the default precision are from true fp32 (TF32: ~1e-3)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    keys = jax.random.split(jax.random.key(0), 4)
    a, b = (jax.random.normal(k, (256, 256), jnp.float32) for k in keys[:2])
    x = jax.random.normal(keys[2], (1, 17, 17, 128), jnp.float32)  # an Inception V3 block's
    w = jax.random.normal(keys[3], (3, 3, 128, 128), jnp.float32)  # 3x3 convolution, smaller

    def conv(x: jax.Array, w: jax.Array, precision: lax.Precision) -> jax.Array:
        layout = ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=layout, precision=precision
        )

    def error(default: jax.Array, exact: jax.Array) -> float:
        return float(jnp.max(jnp.abs(default - exact)) / jnp.max(jnp.abs(exact)))

    # The operands are arguments, not constants, so that XLA computes them on the device.
    dot = jax.jit(lambda x, y, precision: jnp.dot(x, y, precision=precision), static_argnums=2)
    convolve = jax.jit(conv, static_argnums=2)
    return {
        "dot_error": error(dot(a, b, None), dot(a, b, lax.Precision.HIGHEST)),
        "conv_error": error(convolve(x, w, None), convolve(x, w, lax.Precision.HIGHEST)),
    }


def _matmul_tflops(n: int, seconds: float, tf32: bool) -> dict[str, float]:
    """Dense n x n matrix products per second, as TFLOP/s: true fp32 (highest precision),
    TF32 (float32 at the default precision, where it runs so), bf16 and fp16."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    cases = {"fp32": ("float32", lax.Precision.HIGHEST)}
    if tf32:
        cases["tf32"] = ("float32", lax.Precision.DEFAULT)
    cases["bf16"] = ("bfloat16", lax.Precision.DEFAULT)
    cases["fp16"] = ("float16", lax.Precision.DEFAULT)
    rates = {}
    for name, (dtype, precision) in cases.items():
        a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype=dtype)
        product = jax.jit(lambda x, y, p=precision: jnp.dot(x, y, precision=p))
        product(a, b).block_until_ready()
        repeats, begun = 0, time.perf_counter()
        while repeats == 0 or time.perf_counter() - begun < seconds:
            jax.block_until_ready([product(a, b) for _ in range(10)])
            repeats += 10
        rates[name] = 2 * n**3 * repeats / (time.perf_counter() - begun) / 1e12
    return rates


def _forward_flops(model: Any) -> float:
    """Multiply-adds x 2 of one image through the model's convolutions and dense layers."""
    import keras

    total = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if hasattr(layer, "layers"):
            stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.Conv2D):
            height, width, channels = layer.output.shape[1:]
            inputs = layer.input.shape[-1]
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * height * width * channels * kernel * inputs
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return float(total)


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(_MESSAGE + json.dumps(message) + "\n")
    out.flush()


if __name__ == "__main__":
    raise SystemExit(main())
