"""Orchestration cost: our exactly-once worker loop against plain ``study.optimize``.

With a near-zero objective, N worker processes (default 1, 4, 8) drain a grid study on SQLite and
on a throwaway PostgreSQL server (durable settings, started here). For each: trials per second,
surplus trials (must be 0), and milliseconds per trial. The baseline is stock Optuna on the same
storage settings: ``study.optimize`` with ``GridSampler`` on a fresh study of the same grid, by
the same number of processes (its surplus shows why lrstudy does not use it). Timing runs from
a start signal, after every process has imported its libraries and opened the storage, to the
last process's return.

    .venv/bin/python benchmarks/orchestration.py [--cells 48] [--workers 1 4 8]
        [--backends sqlite postgresql] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from storage import open_storage
from study.grid import RetryStaleCell, create_grid_study, load_grid_study, run_worker

_ROOT = Path(__file__).resolve().parents[1]
_HEARTBEAT_S, _GRACE_S = 30, 120  # as a real study would set them: a beat before each claim
_MODES = {"lrstudy": "run_worker", "optuna": "study.optimize"}


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("learning_rate", 1e-6, 1.0, log=True) + trial.suggest_int(
        "seed", 0, 10_000
    )


def _grid(cells: int) -> dict[str, list[float | int]]:
    rates = [10.0**-k for k in range(1, 9)]
    return {"learning_rate": rates, "seed": list(range(max(1, cells // len(rates))))}


def _child(
    url: str, name: str, mode: str, grid: dict, ready: object, go: object, done: object
) -> None:
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(
        url, heartbeat_s=_HEARTBEAT_S, grace_s=_GRACE_S, stale_trial_callback=RetryStaleCell()
    )
    if mode == "lrstudy":
        study = load_grid_study(storage, name)
    else:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.GridSampler(grid, seed=0)
        )
    ready.put(1)  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    if mode == "lrstudy":
        run_worker(study, objective, worker_id=multiprocessing.current_process().name, poll_s=0.05)
    else:
        study.optimize(objective)  # GridSampler stops it once every cell has been visited.
    done.put(time.perf_counter())  # type: ignore[attr-defined]


def _measure(
    ctx: multiprocessing.context.BaseContext, url: str, mode: str, workers: int, grid: dict
) -> tuple[float, int, int]:
    """Seconds, trials and cells of one run on a fresh study."""
    name = f"{mode}-{workers}"
    storage = open_storage(
        url, heartbeat_s=_HEARTBEAT_S, grace_s=_GRACE_S, stale_trial_callback=RetryStaleCell()
    )
    if mode == "lrstudy":
        create_grid_study(storage, name, grid)
    else:
        optuna.create_study(storage=storage, study_name=name, direction="maximize")
    ready, go, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=_child, args=(url, name, mode, grid, ready, go, done))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    start = time.perf_counter()
    go.set()
    ends = [done.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    cells = len({(t.params.get("learning_rate"), t.params.get("seed")) for t in trials})
    return max(ends) - start, len(trials), cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(_ROOT))
    from tests.postgres import PostgresServer, missing_reason

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["optuna", "storage", "study.grid"])
    grid = _grid(args.cells)
    n_cells = len(grid["learning_rate"]) * len(grid["seed"])
    print(
        f"{n_cells} cells, near-zero objective, heartbeat {_HEARTBEAT_S} s; "
        f"{multiprocessing.cpu_count()} CPUs"
    )
    print(f"median of {args.repeat} interleaved runs; surplus: the most in any run")
    header = f"{'backend':<11}{'loop':<16}{'N':>3}{'trials/s':>10}{'ms/trial':>10}"
    print(header + f"{'surplus':>9}{'cells':>7}")
    for backend in args.backends:
        server = None
        with tempfile.TemporaryDirectory() as folder:
            if backend == "postgresql":
                reason = missing_reason()
                if reason:
                    print(f"postgresql: skipped, {reason}")
                    continue
                server = PostgresServer(durable=True)
            try:
                for workers in args.workers:
                    runs: dict[str, list[tuple[float, int, int]]] = {m: [] for m in _MODES}
                    for repeat in range(args.repeat):  # interleaved, so drift hits both alike
                        for mode in _MODES:
                            url = (
                                server.create_database()
                                if server
                                else f"sqlite:///{folder}/{mode}-{workers}-{repeat}.db"
                            )
                            runs[mode].append(_measure(ctx, url, mode, workers, grid))
                    per_trial = {}
                    for mode, label in _MODES.items():
                        ms = statistics.median(
                            1000 * sec / trials for sec, trials, _ in runs[mode]
                        )
                        per_trial[mode] = ms
                        surplus = max(trials - n_cells for _, trials, _ in runs[mode])
                        cells = min(c for _, _, c in runs[mode])
                        print(
                            f"{backend:<11}{label:<16}{workers:>3}{1000 / ms:>10.1f}{ms:>10.2f}"
                            f"{surplus:>9}{cells:>7}"
                        )
                    print(
                        f"{'':<11}overhead of run_worker vs study.optimize, N={workers}: "
                        f"{per_trial['lrstudy'] - per_trial['optuna']:+.2f} ms/trial "
                        f"(x{per_trial['lrstudy'] / per_trial['optuna']:.2f})"
                    )
            finally:
                if server is not None:
                    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
