"""GPU throughput of the paper's protocol: K packed batch-8 workers against the batch-128 ceiling.

Inception V3 at 224 px trains on real-shaped uint8 images (random pixels in a memory-mapped
file, fed by the trainer's ``BatchFeed`` through ``model.fit``, as a cell trains). It measures:

- the card's matrix rate (a ``jnp.dot`` loop in float32, bfloat16 and float16);
- one process at batch 128, the ceiling, compiled (XLA) in float32 and in mixed precision, then
  uncompiled; and its prediction rate at the evaluation batch size;
- K = 1, 2, 4, 8 worker processes at batch 8 on the same GPU, each with the environment
  ``lrstudy launch --per-gpu 8`` gives it (memory grown on demand, capped at 1/8), in float32
  and mixed precision, compiled; K = 1 uncompiled; aggregate training images/s, step time per
  worker and the feed's CPU time per batch (the GPU never waits on input when it is small);
- the fraction of the matrix rate each run reaches (FLOPs counted from the model's
  convolutions and dense layers; a training step counts 3x the forward pass);
- the projected wall time of the paper's grid (12 cells x 60 epochs x 2,930 training and 2,426
  validation images) at the best K, with one model build and compilation per cell.

It prints a Markdown table and writes JSON to ``--out``. Only Keras (JAX backend), JAX, NumPy
and the trainer are used: it runs on a machine without TensorFlow, Optuna or scikit-learn.
``--tiny`` runs the same code on a small CNN at 32 px on a CPU in well under a minute, for CI.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --out gpu_throughput.json
    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --tiny --out /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing lrstudy
    sys.path.insert(0, str(ROOT))

# The paper's grid (Kim & Ye 2022): 4 learning rates x 3 seeds, 60 epochs, Table 2's split.
GRID_CELLS, GRID_EPOCHS, TRAIN_IMAGES, VAL_IMAGES = 12, 60, 2_930, 2_426
_MESSAGE = "@@ "  # prefix of a child's protocol lines; anything else it prints is passed on


@dataclass(frozen=True)
class Variant:
    """How a model is compiled: precision and XLA."""

    name: str
    mixed_precision: bool
    jit_compile: bool


VARIANTS = {
    v.name: v
    for v in (
        Variant("fp32-xla", mixed_precision=False, jit_compile=True),
        Variant("mixed-xla", mixed_precision=True, jit_compile=True),
        Variant("fp32-eager", mixed_precision=False, jit_compile=False),
    )
}


@dataclass(frozen=True)
class Sizes:
    model: str
    image_size: int
    images: int  # images in the memory-mapped file each process trains on
    batch: int  # the paper's per-worker batch
    ceiling_batch: int
    eval_batch: int
    workers: tuple[int, ...]
    seconds: float  # measuring time of one run
    matmul_n: int
    matmul_seconds: float


FULL = Sizes("inception_v3", 224, 1024, 8, 128, 64, (1, 2, 4, 8), 10.0, 8192, 1.0)
TINY = Sizes("small_cnn", 32, 64, 8, 32, 16, (1, 2), 1.0, 256, 0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Write the results as JSON here (required).")
    parser.add_argument("--markdown", help="Also write the Markdown table here.")
    parser.add_argument("--tiny", action="store_true", help="Small CNN, 32 px, CPU-sized.")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="Stop measuring after this many seconds."
    )
    parser.add_argument(
        "--no-deterministic",
        dest="deterministic",
        action="store_false",
        help="Without XLA's deterministic GPU kernels (the paper preset uses them).",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: "solo" or "packed"
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    if args.child:
        return _child(args.child, sizes, args.seed, args.deterministic)
    if not args.out:
        parser.error("--out FILE is required: where the JSON results go")
    return _parent(args, sizes)


# --- the parent: starts children, tells them what to run, gathers and reports --------------


class _Child:
    """A worker process that answers one JSON line per command on its stdin."""

    def __init__(self, role: str, seed: int, env: dict[str, str], argv: list[str]) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", role]
        self.process = subprocess.Popen(
            [*command, "--seed", str(seed), *argv],
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
        return message

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class _OutOfTime(Exception):
    """The time budget ended before a child answered."""


def _parent(args: argparse.Namespace, sizes: Sizes) -> int:
    from study.launch import Slot

    started = time.monotonic()
    deadline = started + args.budget_s
    argv = [
        *(["--tiny"] if args.tiny else []),
        *([] if args.deterministic else ["--no-deterministic"]),
    ]
    base = {**os.environ, "KERAS_BACKEND": "jax"}
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "sizes": asdict(sizes),
        "deterministic": args.deterministic,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("keras", "jax", "jaxlib", "numpy")},
        "runs": [],
        "skipped": [],
    }
    children: list[_Child] = []
    try:
        # One process alone on the GPU: matrix rate, the batch-128 ceiling, prediction rate.
        solo = _Child("solo", 0, Slot(1, "0", 1).environment(base), argv)
        children.append(solo)
        hello = _answer(solo, deadline)
        report.update({k: hello[k] for k in ("device", "flops_per_image", "feed_ms")})
        solo.send({"matmul": sizes.matmul_n, "seconds": sizes.matmul_seconds})
        report["matmul_tflops"] = _answer(solo, deadline)["matmul_tflops"]
        for name in ("fp32-xla", "mixed-xla"):
            _run(report, [solo], name, sizes.ceiling_batch, sizes, deadline)
        for name in ("fp32-xla", "mixed-xla"):
            solo.send({"predict": name, "batch": sizes.eval_batch})
            report.setdefault("predict", []).append(_answer(solo, deadline))
        solo.send({"quit": True})
        solo.stop()
        # K workers at batch 8: all start at once with the environment of --per-gpu K_max.
        most = max(sizes.workers)
        env = [Slot(i + 1, "0", most).environment(base) for i in range(most)]
        packed = [_Child("packed", i, env[i], argv) for i in range(most)]
        children += packed
        report["startup_s"] = max(_answer(child, deadline)["ready_s"] for child in packed)
        for name in ("fp32-xla", "mixed-xla"):
            for workers in sizes.workers:
                _run(report, packed[:workers], name, sizes.batch, sizes, deadline)
        _run(report, packed[:1], "fp32-eager", sizes.batch, sizes, deadline)
        for child in packed:
            child.stop()
        # Last, as uncompiled JAX may take long: the ceiling without XLA.
        solo = _Child("solo", 0, Slot(1, "0", 1).environment(base), argv)
        children.append(solo)
        _answer(solo, deadline)
        _run(report, [solo], "fp32-eager", sizes.ceiling_batch, sizes, deadline)
    except _OutOfTime:
        report["skipped"].append(f"stopped by --budget-s {args.budget_s:g} before the end")
    except (RuntimeError, OSError) as error:
        report["skipped"].append(f"stopped by an error: {error}")
    finally:
        for child in children:
            child.stop()
    report["seconds"] = time.monotonic() - started
    _summarize(report, sizes)
    table = _markdown(report)
    print(table)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 1 if any("error" in line for line in report["skipped"]) else 0


def _answer(child: _Child, deadline: float) -> dict[str, Any]:
    message = child.receive(deadline)
    if "error" in message:
        raise RuntimeError(f"a benchmark child failed: {message['error']}")
    return message


def _run(
    report: dict[str, Any],
    children: list[_Child],
    variant: str,
    batch: int,
    sizes: Sizes,
    deadline: float,
) -> None:
    """Train ``variant`` in every child at once for ``sizes.seconds``; record the sum."""
    for child in children:
        child.send({"train": variant, "batch": batch, "seconds": sizes.seconds})
    answers = [_answer(child, deadline) for child in children]
    report["runs"].append(
        {
            "variant": variant,
            "batch": batch,
            "workers": len(children),
            "images_per_s": sum(a["images_per_s"] for a in answers),
            "step_ms": [1000.0 * batch / a["images_per_s"] for a in answers],
            "compile_s": max(a["compile_s"] for a in answers),
        }
    )


def _summarize(report: dict[str, Any], sizes: Sizes) -> None:
    """Add each run's share of the ceiling and of the matrix rate, then the grid projection."""
    flops = report.get("flops_per_image")
    tflops = report.get("matmul_tflops", {})
    ceilings = {
        run["variant"]: run["images_per_s"]
        for run in report["runs"]
        if run["batch"] == sizes.ceiling_batch
    }
    for run in report["runs"]:
        dtype = "float16" if VARIANTS[run["variant"]].mixed_precision else "float32"
        achieved = 3 * flops * run["images_per_s"] / 1e12 if flops else None
        run["train_tflops"] = achieved
        run["of_matmul_rate"] = achieved / tflops[dtype] if achieved and dtype in tflops else None
        ceiling = ceilings.get(run["variant"])
        run["of_ceiling"] = run["images_per_s"] / ceiling if ceiling else None
    predict = {p["variant"]: p["images_per_s"] for p in report.get("predict", [])}
    projections = []
    for variant in ("fp32-xla", "mixed-xla"):
        packed = [
            r for r in report["runs"] if r["variant"] == variant and r["batch"] == sizes.batch
        ]
        if not packed or variant not in predict:
            continue
        best = max(packed, key=lambda r: r["images_per_s"])
        k = best["workers"]
        train_s = GRID_CELLS * GRID_EPOCHS * TRAIN_IMAGES / best["images_per_s"]
        # Validation of K workers shares the GPU too; counted as if run one after another.
        val_s = GRID_CELLS * GRID_EPOCHS * VAL_IMAGES / predict[variant]
        # Each worker builds and compiles a new model per cell.
        build_s = math.ceil(GRID_CELLS / k) * best["compile_s"]
        projections.append(
            {
                "variant": variant,
                "workers": k,
                "train_s": train_s,
                "validation_s": val_s,
                "build_s": build_s,
                "total_minutes": (train_s + val_s + build_s) / 60,
            }
        )
    report["grid_projection"] = projections


def _markdown(report: dict[str, Any]) -> str:
    def number(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    lines = [
        f"device: {report.get('device', '?')}; keras {report['versions']['keras']}, "
        f"jax {report['versions']['jax']}; deterministic XLA: {report['deterministic']}",
        "matrix rate (TFLOP/s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report.get("matmul_tflops", {}).items()),
        f"FLOPs per image, forward: {number(report.get('flops_per_image'), '.3g')}; "
        f"feed CPU time per batch of 8: {number(report.get('feed_ms'), '.3f')} ms",
        "",
        "| variant | batch | workers | images/s | of ceiling | TFLOP/s | of matrix rate "
        "| step ms per worker | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in report["runs"]:
        steps = sum(run["step_ms"]) / len(run["step_ms"])
        lines.append(
            f"| {run['variant']} | {run['batch']} | {run['workers']} "
            f"| {run['images_per_s']:.1f} | {number(run['of_ceiling'], '.0%')} "
            f"| {number(run['train_tflops'], '.2f')} | {number(run['of_matmul_rate'], '.1%')} "
            f"| {steps:.1f} | {run['compile_s']:.0f} |"
        )
    for p in report.get("predict", []):
        lines.append(f"\nprediction at batch {p['batch']}, {p['variant']}: "
                     f"{p['images_per_s']:.1f} images/s")  # fmt: skip
    for p in report.get("grid_projection", []):
        lines.append(
            f"\npaper grid, {p['variant']} with {p['workers']} worker(s): "
            f"{p['total_minutes']:.1f} min (train {p['train_s'] / 60:.1f}, validation "
            f"{p['validation_s'] / 60:.1f}, model builds {p['build_s'] / 60:.1f})"
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


def _child(role: str, sizes: Sizes, seed: int, deterministic: bool) -> int:
    started = time.monotonic()
    if deterministic:
        from trainer import use_deterministic_xla

        use_deterministic_xla()  # before JAX starts, as the CLI does for a worker
    import jax
    import numpy as np

    from trainer import BatchFeed

    out = sys.stdout
    with tempfile.TemporaryDirectory() as scratch:
        part = _part(Path(scratch), sizes, seed)
        models = _Models(sizes, seed)
        if role == "packed":  # compile now, so that all K workers start measuring together
            for name in ("fp32-xla", "mixed-xla"):
                models.compile(name, part, sizes.batch)
        hello: dict[str, Any] = {
            "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "flops_per_image": _forward_flops(models.get("fp32-xla")),
            "feed_ms": _feed_ms(BatchFeed(part, sizes.batch, shuffle=True, seed=seed)),
            "ready_s": time.monotonic() - started,
        }
        _send(out, hello)
        for line in sys.stdin:
            command = json.loads(line)
            if "quit" in command:
                break
            try:
                if "matmul" in command:
                    _send(
                        out,
                        {"matmul_tflops": _matmul_tflops(command["matmul"], command["seconds"])},
                    )
                elif "train" in command:
                    name, batch = command["train"], command["batch"]
                    compile_s = models.compile(name, part, batch)
                    rate = _train_rate(models.get(name), part, batch, command["seconds"], seed)
                    _send(out, {"images_per_s": rate, "compile_s": compile_s})
                elif "predict" in command:
                    feed = BatchFeed(part, command["batch"], shuffle=False)
                    model = models.get(command["predict"])
                    model.predict(feed, verbose=0)  # compiles the prediction step
                    begun = time.perf_counter()
                    np.asarray(model.predict(feed, verbose=0))
                    rate = len(part) / (time.perf_counter() - begun)
                    _send(out, {"variant": command["predict"], "batch": command["batch"],
                                "images_per_s": rate})  # fmt: skip
            except Exception as error:  # reported to the parent, which stops with it
                _send(out, {"error": f"{type(error).__name__}: {error}"})
    return 0


class _Models:
    """One built model per variant, each compiled once (its first steps) and timed."""

    def __init__(self, sizes: Sizes, seed: int) -> None:
        self.sizes, self.seed = sizes, seed
        self.models: dict[str, Any] = {}
        self.compile_s: dict[tuple[str, int], float] = {}

    def get(self, name: str) -> Any:
        import keras

        from trainer import build_model

        if name not in self.models:
            variant = VARIANTS[name]
            keras.utils.set_random_seed(self.seed)
            self.models[name] = build_model(
                self.sizes.model,
                self.sizes.image_size,
                "none",
                optimizer="adam",
                learning_rate=1e-4,
                mixed_precision=variant.mixed_precision,
                jit_compile=variant.jit_compile,
            )
        return self.models[name]

    def compile(self, name: str, part: Any, batch: int) -> float:
        """Seconds of building the model and its first training steps at ``batch``."""
        if (name, batch) not in self.compile_s:
            begun = time.perf_counter()
            _train_rate(self.get(name), part, batch, 0.0, self.seed)
            self.compile_s[(name, batch)] = time.perf_counter() - begun
        return self.compile_s[(name, batch)]


def _part(folder: Path, sizes: Sizes, seed: int) -> Any:
    """A train part over a memory-mapped uint8 file, as the image cache gives one."""
    import numpy as np

    from trainer import Part

    rng = np.random.default_rng(seed)
    shape = (sizes.images, sizes.image_size, sizes.image_size, 3)
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, shape)
    images[:] = rng.integers(0, 256, shape, dtype=np.uint8)
    images.flush()
    readonly = np.load(folder / "images.npy", mmap_mode="r")
    return Part(
        name="train",
        images=readonly,
        indices=np.arange(sizes.images, dtype=np.int64),
        labels=rng.integers(0, 2, sizes.images).astype(np.uint8),
        paths=tuple(f"image{i}.png" for i in range(sizes.images)),
    )


def _train_rate(model: Any, part: Any, batch: int, seconds: float, seed: int) -> float:
    """Training images/s of ``model.fit`` over the part for about ``seconds`` (3 steps if 0)."""
    import jax
    import keras

    from trainer import BatchFeed

    feed = BatchFeed(part, batch, shuffle=True, seed=seed)
    done = {"steps": 0}
    begun = time.perf_counter()

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index: int, logs: dict | None = None) -> None:
            done["steps"] += 1
            enough = done["steps"] >= 3 if seconds == 0 else time.perf_counter() > begun + seconds
            if enough:
                self.model.stop_training = True

    model.fit(feed, epochs=10**6, shuffle=False, verbose=0, callbacks=[Clock()])
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return done["steps"] * batch / (time.perf_counter() - begun)


def _feed_ms(feed: Any) -> float:
    """CPU milliseconds to read one batch from the memory-mapped file."""
    begun = time.perf_counter()
    reads = 0
    while time.perf_counter() - begun < 0.5:
        for index in range(len(feed)):
            feed[index]
            reads += 1
    return 1000.0 * (time.perf_counter() - begun) / reads


def _matmul_tflops(n: int, seconds: float) -> dict[str, float]:
    """Dense n x n matrix products per second in each dtype, as TFLOP/s."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for dtype in ("float32", "bfloat16", "float16"):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype=dtype)
        product = jax.jit(jnp.dot)
        product(a, b).block_until_ready()
        repeats, begun = 0, time.perf_counter()
        while time.perf_counter() - begun < seconds:
            results = [product(a, b) for _ in range(10)]
            jax.block_until_ready(results)
            repeats += 10
        rates[dtype] = 2 * n**3 * repeats / (time.perf_counter() - begun) / 1e12
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
